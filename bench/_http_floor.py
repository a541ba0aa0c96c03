"""The client's own share of the HTTP path: a trivial streamable HTTP responder.

It answers every POST at once with a canned JSON body (the `echo` result), no MCP server, no
gateway, no skill. A client timed against it gives the least any server could add to direct
stdio for that client: its HTTP stack, its transport and loopback TCP. It is a yardstick for
`bench/gateway.py`, not a server: no validation. `python _http_floor.py` serves it in a process
of its own (as the gateway's HTTP server runs in `run --http`'s), on uvloop when installed, and
prints its URL on stdout; it runs until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

_CAPABILITIES = {"tools": {"listChanged": False}}
_INFO = {"name": "floor", "version": "0"}
_ECHO = {"content": [{"type": "text", "text": "Echo: bench"}]}


def _result(method: str, message: dict[str, Any], modern: bool) -> dict[str, Any]:  # noqa: FBT001
    if method == "initialize":
        version = message["params"]["protocolVersion"]
        return {"protocolVersion": version, "capabilities": _CAPABILITIES, "serverInfo": _INFO}
    if method == "server/discover":
        versions = ["2026-07-28", "2025-11-25"]
        return {"supportedVersions": versions, "capabilities": _CAPABILITIES, "serverInfo": _INFO}
    result: dict[str, Any] = dict(_ECHO) if method == "tools/call" else {}
    if method == "tools/list":
        echo = {"name": "echo", "inputSchema": {"type": "object"}}
        result = {"tools": [echo]} | ({"ttlMs": 0, "cacheScope": "private"} if modern else {})
    return result | ({"resultType": "complete"} if modern else {})


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
            body = await reader.readexactly(int(fields.get("content-length", "0")))
            message = json.loads(body) if body else {}
            if head[0].startswith("DELETE"):  # the client ending its session
                status, payload = b"200 OK", b""
            elif not head[0].startswith("POST") or "id" not in message:
                status, payload = b"202 Accepted", b""
            else:
                modern = fields.get("mcp-protocol-version", "") > "2025-11-25"
                result = _result(message["method"], message, modern)
                answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
                status, payload = b"200 OK", json.dumps(answer).encode()
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nmcp-session-id: floor\r\n"
                b"content-length: %d\r\n\r\n%s" % (status, len(payload), payload)
            )
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def trivial_server() -> AsyncIterator[str]:
    """Serve the trivial responder on a free loopback port; yield its URL."""
    handlers: set[asyncio.Task[None]] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside a task
        handlers.add(task)
        # Ended below by our own cancel: end quietly (asyncio logs a handler that raised).
        with contextlib.suppress(asyncio.CancelledError):
            await _answer(reader, writer)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    finally:
        server.close()
        for task in handlers:  # the connection may outlive the client's exit by a moment
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def _serve_until_stopped() -> None:
    async with trivial_server() as url:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


def main() -> None:
    """Serve the trivial responder in this process until it is stopped; print its URL."""
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop  # noqa: PLC0415 - optional, like the gateway's (launch.SERVER_LOOP)

        uvloop.run(_serve_until_stopped())
        return
    asyncio.run(_serve_until_stopped())


if __name__ == "__main__":
    main()
