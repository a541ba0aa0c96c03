// A small client of the TypeScript MCP SDK (@modelcontextprotocol/client, installed from the
// npm registry at test time), probing one server the way conformance.py does, so the tests
// compare what it sees directly and through the gateway.
//
// node ts_client.mjs stdio|http legacy|auto TARGET...
//   stdio: TARGET is the command and its arguments; http: TARGET is the URL (bearer token in
//   the environment variable MCP_BEARER_TOKEN, when set).
// Prints one JSON object: feature -> what was seen.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { StdioClientTransport } from "@modelcontextprotocol/client/stdio";

const [transportKind, era, ...target] = process.argv.slice(2);
const OTHER_SKILLS_TOOLS = new Set((process.env.OTHER_TOOLS || "").split(",").filter(Boolean));

function transport() {
  if (transportKind === "stdio") {
    return new StdioClientTransport({
      command: target[0],
      args: target.slice(1),
      env: process.env,
      stderr: "ignore",
    });
  }
  const token = process.env.MCP_BEARER_TOKEN;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  return new StreamableHTTPClientTransport(new URL(target[0]), { requestInit: { headers } });
}

const client = new Client(
  { name: "ts-conformance", version: "1.0.0" },
  {
    capabilities: { elicitation: { form: {} } },
    versionNegotiation: { mode: era === "auto" ? "auto" : "legacy" },
  },
);
let asked = 0;
client.setRequestHandler("elicitation/create", async () => {
  asked += 1;
  return { action: "accept", content: { name: "Ada", interpretation: "x" } };
});

const seen = {};
async function feature(name, run) {
  try {
    seen[name] = await run();
  } catch (error) {
    seen[name] = `error: ${error?.message ?? error}`;
  }
}

await client.connect(transport());
seen.protocol = client.getNegotiatedProtocolVersion();
await feature("tools", async () => {
  const { tools } = await client.listTools();
  return `${tools.filter((tool) => !OTHER_SKILLS_TOOLS.has(tool.name)).length} tools`;
});
await feature("resources", async () => {
  const { resources } = await client.listResources();
  const { resourceTemplates } = await client.listResourceTemplates();
  return `${resources.length} resources, ${resourceTemplates.length} templates`;
});
await feature("resources/read", async () => {
  const read = await client.readResource({ uri: "demo://resource/static/document/features.md" });
  return `${read.contents.length} contents, ${read.contents[0].mimeType}`;
});
await feature("prompts", async () => {
  const { prompts } = await client.listPrompts();
  const got = await client.getPrompt({ name: "args-prompt", arguments: { city: "Lyon" } });
  return `${prompts.length} prompts; ${got.messages[0].content.text}`;
});
await feature("completion", async () => {
  const done = await client.complete({
    ref: { type: "ref/prompt", name: "completable-prompt" },
    argument: { name: "department", value: "E" },
  });
  return done.completion.values.join(",");
});
await feature("progress", async () => {
  let updates = 0;
  await client.callTool(
    { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
    { onprogress: () => { updates += 1; } },
  );
  return updates > 0 ? "received" : "none";
});
await feature("elicitation", async () => {
  const result = await client.callTool({ name: "trigger-elicitation-request", arguments: {} });
  const text = result.content.map((block) => block.text ?? "").join("");
  return `asked ${asked}, ${text.includes("Ada") ? "answer returned" : "no answer"}`;
});
await client.close();
console.log(JSON.stringify(seen));
