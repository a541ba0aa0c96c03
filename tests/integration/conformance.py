"""What real MCP clients see of the everything server, directly and through the gateway.

The same probes run against the everything server started on the host (the version the example
image holds, installed from the npm registry) and against `perstack-sandbox run` of the example
Expert, over stdio and streamable HTTP, in both protocol eras the Python SDK speaks. Each probe
returns feature -> what was seen, in words that do not change from run to run, so the two sides
compare equal when the gateway is transparent.

`python tests/integration/conformance.py` prints the README's conformance table (it needs a
Docker engine and the npm registry, like the integration tests that use this module).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from raw_peers import http_peer, stdio_peer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "perstack.toml"
TS_CLIENT = Path(__file__).with_name("ts_client.mjs")
EVERYTHING = "@modelcontextprotocol/server-everything"
TS_SDK = "@modelcontextprotocol/client"
# Tools of the example Expert's other skills (time, egress-probe): not the everything server's.
OTHER_TOOLS = frozenset({"get_current_time", "convert_time", "fetch_status"})
TOKEN = "conformance-token-0123456789"  # noqa: S105 - a test-only token
MODERN = "2026-07-28"
PROTOCOL = "protocol"  # the version negotiated: informative, not a feature
READY_S = 180  # a first `run` may build the example image
WAIT_S = 8.0  # the everything server logs and announces updates every 5 s
FEATURES = (
    "tools",
    "resources",
    "resources/read",
    "prompts",
    "completion",
    "logging",
    "progress",
    "cancellation",
    "elicitation",
    "sampling",
    "roots",
    "resource updates",
    "tasks",
)


@dataclass
class Target:
    """One running server to probe: how the Python, TypeScript and raw clients reach it."""

    transport: str  # stdio | http
    command: list[str] = field(default_factory=list)  # stdio: the server command
    url: str = ""  # http: the endpoint
    token: str | None = None  # http: the bearer token, if any
    env: dict[str, str] = field(default_factory=dict)

    def python(self, http: httpx2.AsyncClient | None) -> Any:
        """Return the `Client(...)` target: stdio parameters, or a streamable HTTP transport."""
        if self.transport == "stdio":
            return StdioServerParameters(
                command=self.command[0], args=self.command[1:], env=self.env, cwd=str(ROOT)
            )
        return streamable_http_client(self.url, http_client=http)

    def headers(self) -> dict[str, str]:
        """HTTP headers the endpoint needs."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@cache
def npm_dir() -> Path:
    """Install the everything server (the image's version) and the TS SDK client, once."""
    folder = Path(tempfile.mkdtemp(prefix="conformance-npm-"))
    subprocess.run(["npm", "init", "-y"], cwd=folder, check=True, capture_output=True)
    packages = [f"{EVERYTHING}@{everything_version()}", TS_SDK]
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", *packages],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return folder


@cache
def everything_version() -> str:
    """Return the everything server's version inside the example image (built when missing)."""
    sys.path.insert(0, str(ROOT / "src"))
    from perstack_sandbox import engine, images  # noqa: PLC0415 - after the path tweak as a script
    from perstack_sandbox.config import load_config  # noqa: PLC0415
    from perstack_sandbox.plan import plan  # noqa: PLC0415

    config, _ = load_config(EXAMPLE)
    image = engine.ensure_expert_image(plan(config, "demo"), progress=lambda _line: None)
    packages = images.resolved_packages(image)
    return next(p["version"] for p in packages if p["name"] == EVERYTHING)


def everything_js() -> str:
    """Return the everything server's entry point on the host."""
    return str(npm_dir() / "node_modules" / EVERYTHING / "dist" / "index.js")


def free_port() -> int:
    """Return a port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def direct(transport: str):
    """Start the everything server on the host, over `transport`."""
    env = {**os.environ}
    if transport == "stdio":
        yield Target("stdio", command=["node", everything_js()], env=env)
        return
    port = free_port()
    command = ["node", everything_js(), "streamableHttp"]
    async with await anyio.open_process(command, env={**env, "PORT": str(port)}) as server:
        try:
            await _wait_for_port(port)
            yield Target("http", url=f"http://127.0.0.1:{port}/mcp", env=env)
        finally:
            server.terminate()


async def _wait_for_port(port: int) -> None:
    with anyio.fail_after(READY_S):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.1)  # polling a port the child is about to open
                continue
            await stream.aclose()
            return


@contextlib.asynccontextmanager
async def gateway(transport: str):
    """Start `perstack-sandbox run` of the example Expert, over `transport`."""
    env = {**os.environ, "PERSTACK_SANDBOX_TOKEN": TOKEN}
    run = [sys.executable, "-m", "perstack_sandbox", "run", "demo", "-c", str(EXAMPLE)]
    if transport == "stdio":
        yield Target("stdio", command=run, env=env)
        return
    async with await anyio.open_process([*run, "--http", "127.0.0.1:0"], env=env, cwd=ROOT) as p:
        try:
            url = await _announced_url(p)
            yield Target("http", url=url, token=TOKEN, env=env)
        finally:
            p.terminate()
            with anyio.move_on_after(30):
                await p.wait()


async def _announced_url(process: anyio.abc.Process) -> str:
    assert process.stderr is not None
    seen = ""
    with anyio.fail_after(READY_S):
        async for chunk in process.stderr:
            seen += chunk.decode()
            for line in seen.splitlines():
                if line.startswith("gateway: ") and "bearer token: " in seen:
                    return line.removeprefix("gateway: ").strip()
    raise RuntimeError(f"the gateway never announced its URL:\n{seen}")


async def _elicit(_context: Any, _params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada", "interpretation": "x"})


async def _sample(_context: Any, _params: Any) -> types.CreateMessageResult:
    text = types.TextContent(text="sampled-by-the-client")
    return types.CreateMessageResult(role="assistant", content=text, model="fixed")


async def _roots(_context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///projects/demo", name="demo")])


def _text(result: types.CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def probe_python(target: Target, mode: str) -> dict[str, str]:
    """Probe `target` with the Python SDK client (declaring elicitation, sampling, roots)."""
    seen: dict[str, str] = {}
    logs: list[object] = []
    updated = anyio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.set()

    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=target.headers(), timeout=httpx2.Timeout(60))
        )
        client = await stack.enter_async_context(
            Client(
                target.python(http),
                mode=mode,
                elicitation_callback=_elicit,
                sampling_callback=_sample,
                list_roots_callback=_roots,
                logging_callback=on_log,
                message_handler=on_message,
                log_level="debug",
                read_timeout_seconds=60,
            )
        )
        seen[PROTOCOL] = client.protocol_version
        await _probe_catalog(client, seen)
        await _probe_calls(client, seen)
        seen["logging"] = await _probe_logging(client, logs)
        seen["resource updates"] = await _probe_updates(client, updated)
    return seen


async def _probe_catalog(client: Client, seen: dict[str, str]) -> None:
    tools = [t.name for t in (await client.list_tools()).tools if t.name not in OTHER_TOOLS]
    seen["tools"] = f"{len(tools)} tools"
    resources = (await client.list_resources()).resources
    templates = (await client.list_resource_templates()).resource_templates
    seen["resources"] = f"{len(resources)} resources, {len(templates)} templates"
    read = await client.read_resource("demo://resource/static/document/features.md")
    links = await client.call_tool("get-resource-links", {"count": 1})
    link = next(b for b in links.content if isinstance(b, types.ResourceLink))
    followed = await client.read_resource(link.uri)
    seen["resources/read"] = f"{read.contents[0].mime_type}; link read: {len(followed.contents)}"
    prompts = (await client.list_prompts()).prompts
    got = await client.get_prompt("args-prompt", {"city": "Lyon"})
    seen["prompts"] = f"{len(prompts)} prompts; {got.messages[0].content.text}"  # type: ignore[union-attr]
    done = await client.complete(
        types.PromptReference(name="completable-prompt"), {"name": "department", "value": "E"}
    )
    seen["completion"] = ",".join(done.completion.values)


async def _probe_calls(client: Client, seen: dict[str, str]) -> None:
    updates: list[float] = []

    async def on_progress(progress: float, _total: float | None, _message: str | None) -> None:
        updates.append(progress)

    args = {"duration": 1, "steps": 3}
    await client.call_tool("trigger-long-running-operation", args, progress_callback=on_progress)
    seen["progress"] = "received" if updates else "none"
    asked = _text(await client.call_tool("trigger-elicitation-request", {}))
    seen["elicitation"] = "answer returned" if "Ada" in asked else asked[:80]
    sampled = _text(await client.call_tool("trigger-sampling-request", {"prompt": "hi"}))
    seen["sampling"] = "answer returned" if "sampled-by-the-client" in sampled else sampled[:80]
    roots = _text(await client.call_tool("get-roots-list", {}))
    seen["roots"] = "client's roots" if "file:///projects/demo" in roots else roots[:80]


async def _probe_logging(client: Client, logs: list[object]) -> str:
    """Wait for log messages while simulated logging is on (sent 5 s apart)."""
    if client.protocol_version != MODERN:
        await client.set_logging_level("debug")
    await client.call_tool("toggle-simulated-logging", {})
    try:
        # 2026-07-28 delivers log messages only on a request in flight: keep one open.
        args = {"duration": WAIT_S, "steps": 2}
        await client.call_tool("trigger-long-running-operation", args)
    finally:
        await client.call_tool("toggle-simulated-logging", {})
    return "received" if logs else "none"


async def _probe_updates(client: Client, updated: anyio.Event) -> str:
    """Wait for a resources/updated of a subscribed URI while simulated updates are on."""
    uri = "demo://resource/static/document/architecture.md"
    if client.protocol_version == MODERN:
        async with client.listen(resource_subscriptions=[uri]) as sub:
            await client.call_tool("toggle-subscriber-updates", {})
            with anyio.move_on_after(WAIT_S):
                await anext(aiter(sub))
                updated.set()
    else:
        await client.subscribe_resource(uri)
        await client.call_tool("toggle-subscriber-updates", {})
        with anyio.move_on_after(WAIT_S):
            await updated.wait()
    await client.call_tool("toggle-subscriber-updates", {})
    return "received" if updated.is_set() else "none"


async def probe_raw(target: Target) -> dict[str, str]:
    """Probe tasks and cancellation, which the Python SDK client has no words for."""
    peer_of = stdio_peer if target.transport == "stdio" else http_peer
    seen: dict[str, str] = {}
    async with peer_of(target) as peer:
        seen["tasks"] = await _probe_tasks(peer)
        seen["cancellation"] = await _probe_cancel(peer)
    return seen


async def _probe_tasks(peer: Any) -> str:
    call = {"name": "simulate-research-query", "arguments": {"topic": "owls"}}
    created = await peer.request("tools/call", {**call, "task": {"ttl": 60000}})
    task_id = created["result"]["task"]["taskId"]
    with anyio.fail_after(30):
        while True:
            status = (await peer.request("tasks/get", {"taskId": task_id}))["result"]["status"]
            if status not in ("working", "input_required"):
                break
            await anyio.sleep(0.5)  # the task's own pollInterval is 1 s
    payload = await peer.request("tasks/result", {"taskId": task_id})
    report = "report returned" if "Research Report" in json.dumps(payload) else "no report"
    return f"{status}; {report}"


async def _probe_cancel(peer: Any) -> str:
    args = {"duration": 2, "steps": 2}
    call = {"name": "trigger-long-running-operation", "arguments": args}
    cancelled = await peer.send_request("tools/call", call | {"_meta": {"progressToken": "c"}})
    await peer.progress("c")  # the call is in flight (over HTTP, its POST might lag the cancel)
    await peer.notify("notifications/cancelled", {"requestId": cancelled})
    await anyio.sleep(3)  # longer than the call would have run
    await peer.request("ping", None)
    # A result is what must not come; the SDK's 2025-11-25 HTTP transport ends the abandoned
    # POST stream with a -32800 error instead, which no client reads as the call's outcome.
    results = [m for m in peer.seen if m.get("id") == cancelled and "result" in m]
    return "no result for the cancelled call" if not results else "answered anyway"


async def probe_ts(target: Target, mode: str) -> dict[str, str]:
    """Probe `target` with the TypeScript SDK client (ts_client.mjs)."""
    script = npm_dir() / TS_CLIENT.name
    script.write_text(TS_CLIENT.read_text(encoding="utf-8"), encoding="utf-8")
    where = target.command if target.transport == "stdio" else [target.url]
    env = {**target.env, "OTHER_TOOLS": ",".join(sorted(OTHER_TOOLS))}
    if target.token:
        env["MCP_BEARER_TOKEN"] = target.token
    command = ["node", str(script), target.transport, mode, *where]
    done = await anyio.run_process(command, env=env, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"ts_client failed: {done.stderr.decode()[-2000:]}")
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


async def all_probes(side: str, transport: str, mode: str) -> dict[str, str]:
    """Run every probe of one side (direct | gateway), transport and mode, merged."""
    opener = direct if side == "direct" else gateway
    async with opener(transport) as target:
        seen = await probe_python(target, mode)
    if mode == "legacy":
        async with opener(transport) as target:
            seen |= await probe_raw(target)
    return seen


def table(results: dict[tuple[str, str, str], dict[str, str]], features: tuple[str, ...]) -> str:
    """Render a README table: per feature and transport/era, direct and through the gateway."""
    order = [(transport, mode) for transport in ("stdio", "http") for mode in ("legacy", "auto")]
    columns = [column for column in order if any(column == key[1:] for key in results)]
    head = "| feature | " + " | ".join(
        f"{transport} {_era(mode)}: direct | through the gateway" for transport, mode in columns
    )
    lines = [head + " |", "|---" * (1 + 2 * len(columns)) + "|"]
    for feature in (PROTOCOL, *features):
        cells = [
            results.get((side, transport, mode), {}).get(feature, "n/a")
            for transport, mode in columns
            for side in ("direct", "gateway")
        ]
        lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _era(mode: str) -> str:
    return "2025-11-25" if mode == "legacy" else "2026-07-28"


async def _main() -> None:
    python, typescript = {}, {}
    for transport in ("stdio", "http"):
        for mode in ("legacy", "auto"):
            for side in ("direct", "gateway"):
                python[(side, transport, mode)] = await all_probes(side, transport, mode)
                opener = direct if side == "direct" else gateway
                async with opener(transport) as target:
                    typescript[(side, transport, mode)] = await probe_ts(target, mode)
    ts_features = tuple(k for k in next(iter(typescript.values())) if k != PROTOCOL)
    print("Python SDK client (tasks and cancellation: raw JSON-RPC, 2025-11-25 only)\n")  # noqa: T201
    print(table(python, FEATURES))  # noqa: T201
    print("\nTypeScript SDK client\n")  # noqa: T201
    print(table(typescript, ts_features))  # noqa: T201


if __name__ == "__main__":
    anyio.run(_main)
