"""Hand-driven JSON-RPC clients (handshake era) over stdio and streamable HTTP.

For what the SDK clients cannot say: task-augmented calls, and a cancellation whose (absent)
answer is to be watched. Every message received is kept in `seen`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import Any

import anyio
import httpx2

INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "raw-conformance", "version": "0"},
}
ANSWER_S = 60.0


class _Peer:
    """Request ids, the messages seen, and waiting for a response."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._arrived = anyio.Event()

    def _record(self, message: dict[str, Any]) -> None:
        self.seen.append(message)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def _response(self, request_id: int) -> dict[str, Any]:
        with anyio.fail_after(ANSWER_S):
            while True:
                arrived = self._arrived
                for message in self.seen:
                    if message.get("id") == request_id and "method" not in message:
                        return message
                await arrived.wait()

    async def progress(self, token: str) -> dict[str, Any]:
        """Wait for the first progress notification of `token`."""
        with anyio.fail_after(ANSWER_S):
            while True:
                arrived = self._arrived
                for message in self.seen:
                    params = message.get("params") or {}
                    if message.get("method") == "notifications/progress" and (
                        params.get("progressToken") == token
                    ):
                        return message
                await arrived.wait()

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """Send a request and return its response."""
        return await self._response(await self.send_request(method, params))

    async def send_request(self, method: str, params: dict[str, Any] | None) -> int:
        """Send a request without waiting; return its id."""
        raise NotImplementedError


class _StdioPeer(_Peer):
    def __init__(self, process: anyio.abc.Process) -> None:
        super().__init__()
        self._process = process

    async def read(self) -> None:
        assert self._process.stdout is not None
        pending = b""
        async for chunk in self._process.stdout:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    self._record(json.loads(line))

    async def _write(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send(json.dumps(message).encode() + b"\n")

    async def send_request(self, method: str, params: dict[str, Any] | None) -> int:
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method}
        await self._write(body | ({"params": params} if params is not None else {}))
        return request_id

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        body = {"jsonrpc": "2.0", "method": method}
        await self._write(body | ({"params": params} if params is not None else {}))


@contextlib.asynccontextmanager
async def stdio_peer(target: Any):
    """Start and initialise a raw peer of the stdio server `target.command`."""
    async with (
        await anyio.open_process(target.command, env=target.env) as process,
        anyio.create_task_group() as group,
    ):
        peer = _StdioPeer(process)
        group.start_soon(peer.read)
        await peer.request("initialize", INIT)
        await peer.notify("notifications/initialized", None)
        try:
            yield peer
        finally:
            group.cancel_scope.cancel()
            process.terminate()


class _HttpPeer(_Peer):
    def __init__(self, http: httpx2.AsyncClient, url: str, group: anyio.abc.TaskGroup) -> None:
        super().__init__()
        self._http, self._url, self._group = http, url, group
        self._headers = {"accept": "application/json, text/event-stream"}

    async def _post(self, body: dict[str, Any]) -> None:
        async with self._http.stream("POST", self._url, json=body, headers=self._headers) as r:
            if "mcp-session-id" in r.headers:
                self._headers["mcp-session-id"] = r.headers["mcp-session-id"]
                self._headers["mcp-protocol-version"] = INIT["protocolVersion"]
            if r.headers.get("content-type", "").startswith("application/json"):
                body = await r.aread()
                if body.strip():  # a 202 for a notification may have none
                    self._record(json.loads(body))
                return
            async for line in r.aiter_lines():
                if line.startswith("data:") and line[5:].strip():
                    self._record(json.loads(line[5:]))

    async def send_request(self, method: str, params: dict[str, Any] | None) -> int:
        request_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": method}
        body |= {"params": params} if params is not None else {}
        if "mcp-session-id" not in self._headers:  # the session must exist before anything else
            await self._post(body)
        else:
            self._group.start_soon(self._post, body)
        return request_id

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        body = {"jsonrpc": "2.0", "method": method}
        await self._post(body | ({"params": params} if params is not None else {}))


@contextlib.asynccontextmanager
async def http_peer(target: Any):
    """Open and initialise a raw peer of the streamable HTTP server at `target.url`."""
    timeout = httpx2.Timeout(ANSWER_S)
    async with (
        httpx2.AsyncClient(headers=target.headers(), timeout=timeout) as http,
        anyio.create_task_group() as group,
    ):
        peer = _HttpPeer(http, target.url, group)
        await peer.request("initialize", INIT)
        await peer.notify("notifications/initialized", None)
        try:
            yield peer
        finally:
            group.cancel_scope.cancel()
