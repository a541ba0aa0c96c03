"""A small fake Kubernetes API server (aiohttp) for the backend's tests.

It answers the REST calls the backend makes, the way an API server and a kubelet would in
the few respects the backend relies on: create (with uid, creationTimestamp, a Service's
clusterIP), list by label selector, watch pods (each created pod is reported Running and
Ready; a deleted one DELETED), delete by name, follow a pod's log, and exec over a websocket
with the `v4.channel.k8s.io` protocol. An exec records its command, container and the first
stdin line (the environment), then echoes stdin back on stdout; `kill -KILL -1` ends every
open exec of that container with exit code 137. Every request is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

PLURALS = {
    "configmaps": "ConfigMap",
    "secrets": "Secret",
    "services": "Service",
    "pods": "Pod",
    "networkpolicies": "NetworkPolicy",
}
STATUS_CHANNEL = 3


@dataclass
class Exec:
    """One exec session the fake served."""

    pod: str
    container: str
    command: list[str]
    env: dict[str, str] | None = None
    ws: web.WebSocketResponse | None = None


@dataclass
class FakeApi:
    """The fake's state: objects by (kind, name), requests, exec sessions, watchers."""

    namespace_labels: dict[str, str] = field(
        default_factory=lambda: {"pod-security.kubernetes.io/enforce": "restricted"}
    )
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    execs: list[Exec] = field(default_factory=list)
    log_lines: list[bytes] = field(
        default_factory=lambda: [
            b'{"event": "allow", "host": "api.exa.ai", "skill": "search"}\n',
            b"proxy: listening on 0.0.0.0:3128\n",
        ]
    )
    watchers: list[tuple[dict[str, str], asyncio.Queue[dict[str, Any]]]] = field(
        default_factory=list
    )
    url: str = ""
    _uids: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> web.Application:
        """Return the aiohttp application serving the API paths the backend uses."""
        app = web.Application(middlewares=[self._record])
        core = "/api/v1/namespaces/{ns}"
        net = "/apis/networking.k8s.io/v1/namespaces/{ns}"
        app.router.add_get("/api/v1/namespaces/{ns}", self.read_namespace)
        app.router.add_get(core + "/pods/{name}/exec", self.exec)
        app.router.add_get(core + "/pods/{name}/log", self.log)
        for prefix in (core, net):
            app.router.add_post(prefix + "/{plural}", self.create)
            app.router.add_get(prefix + "/{plural}", self.list_or_watch)
            app.router.add_delete(prefix + "/{plural}/{name}", self.delete)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        return await handler(request)

    async def read_namespace(self, request: web.Request) -> web.Response:
        """Answer the namespace with the configured labels."""
        name = request.match_info["ns"]
        return web.json_response(
            {"kind": "Namespace", "metadata": {"name": name, "labels": self.namespace_labels}}
        )

    async def create(self, request: web.Request) -> web.Response:
        """Store a new object; pods become Running and Ready (as a kubelet would report)."""
        kind = PLURALS[request.match_info["plural"]]
        body = await request.json()
        self.created.append(body)
        meta = body["metadata"]
        meta["uid"] = f"uid-{next(self._uids)}"
        meta["creationTimestamp"] = "2026-11-30T00:00:00Z"
        if kind == "Service":
            body["spec"]["clusterIP"] = "10.96.0.50"
        if kind == "Pod":
            body["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        self.objects[kind, meta["name"]] = body
        if kind == "Pod":
            self._notify("ADDED", body)
        return web.json_response(body, status=201)

    def _notify(self, kind: str, pod: dict[str, Any]) -> None:
        labels = pod["metadata"].get("labels", {})
        for wanted, queue in self.watchers:
            if all(labels.get(key) == value for key, value in wanted.items()):
                queue.put_nowait({"type": kind, "object": pod})

    def _matching(self, kind: str, selector: str) -> list[dict[str, Any]]:
        wanted = _selector(selector)
        return [
            body
            for (object_kind, _), body in self.objects.items()
            if object_kind == kind
            and all(body["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        """List by label selector, or stream pod events (current pods first)."""
        kind = PLURALS[request.match_info["plural"]]
        selector = request.query.get("labelSelector", "")
        items = self._matching(kind, selector)
        if request.query.get("watch", "").lower() != "true":
            return web.json_response({"kind": f"{kind}List", "items": items})
        response = web.StreamResponse()
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        watcher = (_selector(selector), queue)
        self.watchers.append(watcher)
        for item in items:
            queue.put_nowait({"type": "ADDED", "object": item})
        try:
            while True:
                event = await queue.get()
                await response.write(json.dumps(event).encode() + b"\n")
        except ConnectionError:  # the client went: the watch is over
            return response
        finally:
            self.watchers.remove(watcher)

    async def delete(self, request: web.Request) -> web.Response:
        """Delete one object; a pod's watchers hear DELETED and its execs end."""
        kind = PLURALS[request.match_info["plural"]]
        name = request.match_info["name"]
        body = self.objects.pop((kind, name), None)
        if body is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        self.deleted.append((kind, name))
        if kind == "Pod":
            self._notify("DELETED", body)
            for session in self.execs:
                if session.pod == name and session.ws is not None:
                    await session.ws.close()
        return web.json_response(body)

    async def log(self, request: web.Request) -> web.StreamResponse:
        """Stream the canned log lines of the proxy."""
        response = web.StreamResponse()
        await response.prepare(request)
        for line in self.log_lines:
            await response.write(line)
        return response

    async def exec(self, request: web.Request) -> web.WebSocketResponse:
        """Serve one exec over the v4 channel protocol."""
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        session = Exec(
            pod=request.match_info["name"],
            container=request.query.get("container", ""),
            command=request.query.getall("command", []),
            ws=ws,
        )
        self.execs.append(session)
        if session.command[-1:] == ["kill -KILL -1"]:
            await self._kill(session)
            return ws
        pending = b""
        async for message in ws:
            if message.type != WSMsgType.BINARY or message.data[:1] != b"\x00":
                continue
            data = message.data[1:]
            if session.env is None:
                pending += data
                if b"\n" not in pending:
                    continue
                line, data = pending.split(b"\n", 1)
                session.env = json.loads(line)
            if data:
                await ws.send_bytes(b"\x01" + data)
                await ws.send_bytes(b"\x02" + b"stderr: got a message\n")
        return ws

    async def _kill(self, killer: Exec) -> None:
        for session in self.execs:
            same = session.pod == killer.pod and session.container == killer.container
            if session is not killer and same and session.ws is not None and not session.ws.closed:
                status = {
                    "status": "Failure",
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": "137"}]},
                }
                with contextlib.suppress(ConnectionError):
                    await session.ws.send_bytes(
                        bytes([STATUS_CHANNEL]) + json.dumps(status).encode()
                    )
                    await session.ws.close()
        assert killer.ws is not None
        await killer.ws.send_bytes(bytes([STATUS_CHANNEL]) + b'{"status": "Success"}')
        await killer.ws.close()


def _selector(text: str) -> dict[str, str]:
    """Parse an equality-only label selector (the only kind the backend sends)."""
    return dict(item.split("=", 1) for item in text.split(",") if item)


@contextlib.asynccontextmanager
async def serving(fake: FakeApi):
    """Serve `fake` on a loopback port; set `fake.url`."""
    runner = web.AppRunner(fake.app(), shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serving_in_thread(fake: FakeApi):
    """Serve `fake` from a thread of its own (for synchronous callers such as the CLI)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        async with serving(fake):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the fake API server did not start"
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
