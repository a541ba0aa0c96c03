"""Shared helpers for the gateway unit tests: fixture skills, clients in both eras, raw JSON-RPC."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from perstack_sandbox.gateway import make_server, new_token, serve_http
from perstack_sandbox.skills import SkillSession, SkillSpec, local_process

FIXTURES = Path(__file__).parents[1] / "fixtures"
SDK_SKILL = FIXTURES / "sdk_skill.py"
DEADLINE_S = 30
ERAS = ["legacy", "auto"]  # the Python client's modes: 2025-11-25 handshake, 2026-07-28


class RecordingSink:
    """An `AuditSink` that keeps the `tools.jsonl` lines and the log text it is told."""

    def __init__(self, lines=None):
        """Start empty; stderr lines also go to the set `lines` when given."""
        self.records: list[dict] = []
        self.text: list[str] = []
        self._lines = lines

    def tool_call(self, call):
        """Keep the call as its tools.jsonl line."""
        self.records.append(call.to_json())
        self.text.append(call.describe())

    def request(self, request):
        """Keep the request as its tools.jsonl line."""
        self.records.append(request.to_json())
        self.text.append(request.describe())

    def skill_stderr(self, _skill, line):
        """Keep the stderr line."""
        self.text.append(line)
        if self._lines is not None:
            self._lines.add(line)

    def warning(self, message):
        """Keep the warning."""
        self.text.append(message)

    def info(self, message):
        """Keep the message."""
        self.text.append(message)


def sdk_skill(name, *, lines=None, **spec):
    """Return a SkillSession over the SDK fixture skill (`--name`); stderr lines go to `lines`."""
    factory = functools.partial(
        local_process, [sys.executable, str(SDK_SKILL), "--name", name], env={"PATH": "/usr/bin"}
    )
    return SkillSession(SkillSpec(name, **spec), factory, audit=RecordingSink(lines))


def text_of(result):
    """Join the text blocks of a CallToolResult."""
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


@contextlib.asynccontextmanager
async def serving_over_http(gateway):
    """Serve `gateway` over streamable HTTP on a free loopback port; yield (url, token)."""
    token, ready, stop = new_token(), anyio.Event(), anyio.Event()
    urls: list[str] = []

    def on_ready(url):
        urls.append(url)
        ready.set()

    async with anyio.create_task_group() as group:
        group.start_soon(
            functools.partial(
                serve_http, gateway, port=0, token=token, on_ready=on_ready, stop=stop
            )
        )
        await ready.wait()
        yield urls[0], token
        stop.set()


@contextlib.asynccontextmanager
async def connected(gateway, mode, *, http=False, **options):
    """Connect a Python SDK client to `gateway` in `mode`, in process or over streamable HTTP."""
    if not http:
        async with Client(make_server(gateway), mode=mode, **options) as client:
            yield client
        return
    async with (
        serving_over_http(gateway) as (url, token),
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as raw,
        Client(streamable_http_client(url, http_client=raw), mode=mode, **options) as client,
    ):
        yield client


class Lines:
    """Lines (of a skill's stderr) as they arrive, with a wait for one that starts a certain way."""

    def __init__(self):
        """Start with no line."""
        self.lines: list[str] = []
        self._arrived = anyio.Event()

    def add(self, line: str) -> None:
        """Record a line and wake the waiters."""
        self.lines.append(line)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait_for(self, prefix: str) -> str:
        """Return the first line starting with `prefix`, waiting for it if needed."""
        while True:
            arrived = self._arrived
            found = [line for line in self.lines if line.startswith(prefix)]
            if found:
                return found[0]
            await arrived.wait()


class Collected:
    """Items a callback collects, with a wait for the first one."""

    def __init__(self):
        """Start empty."""
        self.items: list[object] = []
        self.first = anyio.Event()

    def add(self, item: object) -> None:
        """Record an item."""
        self.items.append(item)
        self.first.set()


class RawPeer:
    """A hand-driven JSON-RPC peer of a gateway server (handshake era), over memory streams."""

    def __init__(self, send, receive):
        """Wrap the client ends of the memory streams."""
        self._send, self._receive = send, receive
        self.seen: list[dict] = []

    async def send(self, message: dict) -> None:
        """Send one JSON-RPC message."""
        parsed = types.jsonrpc_message_adapter.validate_python(message, by_name=False)
        await self._send.send(SessionMessage(parsed))

    async def until(self, predicate):
        """Receive messages until one matches `predicate`; return it (all are kept in `seen`)."""
        while True:
            item = await self._receive.receive()
            message = item.message.model_dump(mode="json", by_alias=True, exclude_none=True)
            self.seen.append(message)
            if predicate(message):
                return message

    async def request(self, request_id, method, params=None):
        """Send a request and return its response (error or result)."""
        body = {"jsonrpc": "2.0", "id": request_id, "method": method}
        await self.send(body | ({"params": params} if params is not None else {}))
        return await self.until(lambda message: message.get("id") == request_id)


@contextlib.asynccontextmanager
async def raw_peer(gateway):
    """Run the gateway's server on memory streams; yield an initialised `RawPeer`."""
    server = make_server(gateway)
    to_server, server_in = anyio.create_memory_object_stream(32)
    server_out, from_server = anyio.create_memory_object_stream(32)
    async with anyio.create_task_group() as group:
        group.start_soon(server.run, server_in, server_out, server.create_initialization_options())
        peer = RawPeer(to_server, from_server)
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        }
        await peer.request(0, "initialize", init)
        await peer.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield peer
        group.cancel_scope.cancel()
