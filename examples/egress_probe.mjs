// A tiny MCP stdio skill (Node standard library only) that tries one HTTPS request.
//
// It shows what the sandbox does to egress: Node's own fetch() goes through the sandbox's
// proxy (NODE_USE_ENV_PROXY=1), which lets allowlisted hosts through and refuses the rest.
import { createInterface } from "node:readline";

const TOOLS = [
  {
    name: "fetch_status",
    description: "GET an https URL with Node's fetch(); returns the HTTP status or the error.",
    inputSchema: {
      type: "object",
      properties: { url: { type: "string" } },
      required: ["url"],
    },
  },
];

const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const text = (payload, isError = false) => ({
  content: [{ type: "text", text: JSON.stringify(payload) }],
  isError,
});

async function fetchStatus(url) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(20000) });
    await response.arrayBuffer();
    return text({ url, status: response.status });
  } catch (error) {
    const cause = error.cause ? `${error.cause.code ?? ""} ${error.cause.message ?? ""}` : "";
    return text({ url, error: `${error.name}: ${error.message} ${cause}`.trim() }, true);
  }
}

async function handle(request) {
  if (request.id === undefined) return;
  const params = request.params ?? {};
  switch (request.method) {
    case "initialize":
      return send({
        jsonrpc: "2.0",
        id: request.id,
        result: {
          protocolVersion: params.protocolVersion ?? "2025-06-18",
          capabilities: { tools: {} },
          serverInfo: { name: "egress-probe", version: "1.0.0" },
        },
      });
    case "tools/list":
      return send({ jsonrpc: "2.0", id: request.id, result: { tools: TOOLS } });
    case "tools/call": {
      const args = params.arguments ?? {};
      const result =
        params.name === "fetch_status"
          ? await fetchStatus(String(args.url))
          : text(`unknown tool ${params.name}`, true);
      return send({ jsonrpc: "2.0", id: request.id, result });
    }
    case "ping":
      return send({ jsonrpc: "2.0", id: request.id, result: {} });
    default:
      return send({
        jsonrpc: "2.0",
        id: request.id,
        error: { code: -32601, message: `method not found: ${request.method}` },
      });
  }
}

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim()) handle(JSON.parse(line));
});
