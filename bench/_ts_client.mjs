// The official TypeScript SDK client (@modelcontextprotocol/client, installed from the npm
// registry at bench time) timing `echo` over streamable HTTP for bench/gateway.py.
//
// node _ts_client.mjs URL legacy|auto
//   Bearer token in MCP_BEARER_TOKEN, when set. Connects once, then for each line N read on
//   stdin makes N sequential calls on its one connection and prints their durations in ms as
//   one JSON array line. Ends when stdin closes.
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const [url, era] = process.argv.slice(2);
const token = process.env.MCP_BEARER_TOKEN;
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const client = new Client(
  { name: "ts-bench", version: "1.0.0" },
  { capabilities: {}, versionNegotiation: { mode: era === "auto" ? "auto" : "legacy" } },
);
await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
const echo = { name: "echo", arguments: { message: "bench" } };
console.log("ready");

for await (const line of createInterface({ input: process.stdin })) {
  const samples = [];
  for (let i = 0; i < Number(line); i += 1) {
    const started = performance.now();
    await client.callTool(echo);
    samples.push(performance.now() - started);
  }
  console.log(JSON.stringify(samples));
}
await client.close();
process.exit(0);
