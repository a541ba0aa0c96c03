"""Serving the gateway: stdio, and streamable HTTP on 127.0.0.1 behind the bearer/Origin guard."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Final, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import uvicorn
from mcp.server.stdio import stdio_server

from perstack_sandbox.errors import GatewayError, UsageError
from perstack_sandbox.gateway._guard import BearerOriginGuard, loopback_origins
from perstack_sandbox.gateway._mount import mounted_endpoint
from perstack_sandbox.gateway._server import make_server
from perstack_sandbox.skills import first_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from perstack_sandbox.gateway._core import Gateway, Prompter
    from perstack_sandbox.gateway._guard import ASGIApp, Receive, Scope, Send


MAX_PORT: Final = 65535
MCP_PATH: Final = "/mcp"
LISTEN_BACKLOG: Final = 128
STDIN_LINES_BUFFERED: Final = 16
STDIN_READ_BYTES: Final = 1 << 16
SHUTDOWN_GRACE_S: Final = 2  # open SSE streams would otherwise hold a graceful stop forever


async def serve_stdio(gateway: Gateway) -> None:
    """Serve the gateway over this process's stdin/stdout until the client closes it.

    Cancelling the caller (SIGINT, SIGTERM) ends serving even while the client keeps stdin
    open: stdin is read by a daemon thread, which neither a cancel nor the exit waits for.
    """
    server = make_server(gateway)
    stdin = cast("anyio.AsyncFile[str]", _StdinLines())  # stdio_server only iterates its lines
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


class _StdinLines:
    """The lines of this process's stdin, read by a daemon thread.

    anyio reads files in its worker threads, which a cancelled task still waits for and the
    interpreter joins at exit: a client that keeps stdin open would hang `run` after a signal.
    """

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[str](STDIN_LINES_BUFFERED)
        self._started = False

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        if not self._started:
            self._started = True
            token = anyio.lowlevel.current_token()
            threading.Thread(target=self._pump, args=(token,), name="stdin", daemon=True).start()
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def _pump(self, token: anyio.lowlevel.EventLoopToken) -> None:
        # os.read on a private descriptor: a thread blocked in sys.stdin's buffered reader holds
        # its lock, and the interpreter's shutdown aborts on that lock.
        fd = os.dup(sys.stdin.fileno())
        pending = b""
        try:
            while chunk := os.read(fd, STDIN_READ_BYTES):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._deliver(token, line)
            if pending:
                self._deliver(token, pending)
            anyio.from_thread.run_sync(self._send.close, token=token)
        except (OSError, RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the loop or the reader is gone: serving has ended
        finally:
            os.close(fd)

    def _deliver(self, token: anyio.lowlevel.EventLoopToken, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        anyio.from_thread.run(self._send.send, text, token=token)


def parse_listen(address: str) -> tuple[str, int]:
    """Parse `--http PORT` (or `127.0.0.1:PORT`, `localhost:PORT`): always loopback.

    Raises:
        UsageError: malformed, or not a loopback host.

    """
    host, sep, port_text = address.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= MAX_PORT:
        raise UsageError(f"--http wants a PORT (served on 127.0.0.1:PORT), got {address!r}")
    if host not in ("127.0.0.1", "localhost"):
        raise UsageError(f"--http serves on 127.0.0.1 only (loopback), got host {host!r}")
    return "127.0.0.1", int(port_text)


async def serve_http(  # noqa: PLR0913 - the server's settings, all keyword-only
    gateway: Gateway,
    *,
    port: int,
    token: str,
    on_ready: Callable[[str], None] | None = None,
    stop: anyio.Event | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve streamable HTTP on 127.0.0.1:`port` (0: any free port) behind the guard.

    `sock`, when given, is a socket `bind_loopback` already bound (and `port` is ignored).

    `on_ready(url)` is called once the socket listens. Setting `stop`, or cancelling the caller
    (SIGINT, SIGTERM), stops it gracefully: uvicorn is asked to exit, not cancelled mid-request.

    Raises:
        GatewayError: the port cannot be bound.

    """
    sock = sock if sock is not None else bind_loopback(port)
    actual = sock.getsockname()[1]
    origins = loopback_origins(actual)
    hosts = [f"127.0.0.1:{actual}", f"localhost:{actual}"]
    # The SDK's session manager and transport, with every check of theirs, minus the Starlette
    # app around them: one path needs no router (decision 52). The sessions run for as long as
    # uvicorn serves (lifespan off: nothing else has a lifespan).
    async with mounted_endpoint(
        gateway, allowed_hosts=hosts, allowed_origins=sorted(origins)
    ) as endpoint:
        app = BearerOriginGuard(OnePath(MCP_PATH, endpoint), token=token, allowed_origins=origins)
        # log_config=None: uvicorn's default dictConfig shuts down every existing handler, which
        # would close the run's tools.jsonl and skills.log for the rest of an HTTP run.
        # proxy_headers=False: no proxy sits in front of a loopback endpoint to be believed.
        # http left to "auto": httptools, a dependency, where it installs (decision 52).
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        url = f"http://127.0.0.1:{actual}{MCP_PATH}"
        await _serve_until_stopped(_SignalFreeServer(config), sock, url, on_ready, stop)


async def _serve_until_stopped(
    server: uvicorn.Server,
    sock: socket.socket,
    url: str,
    on_ready: Callable[[str], None] | None,
    stop: anyio.Event | None,
) -> None:
    """Run `server` on `sock` until it ends, `stop` is set or the caller is cancelled."""
    served = anyio.Event()

    async def run_server() -> None:
        with anyio.CancelScope(shield=True):  # stopped by should_exit below, never cancelled
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()
                served.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run_server)
        if on_ready is not None:
            on_ready(url)
        try:
            await first_of(served.wait, (stop or anyio.Event()).wait)
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_S * 2):
                await served.wait()


class OnePath:
    """ASGI app: `app` at exactly one path, 404 anywhere else (what a one-route router does)."""

    def __init__(self, path: str, app: ASGIApp) -> None:
        """Serve `app` at `path` only."""
        self._path = path
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand a request for the path to the app; answer 404 Not Found to the rest."""
        if scope.get("path") == self._path:
            await self._app(scope, receive, send)
            return
        body = b"Not Found"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to the command.

    The command cancels its body on a signal (`engine.cancel_on_signals`), which makes
    `serve_http` ask this server to exit. uvicorn's own handlers would instead stop it first and
    re-raise the signal afterwards, so whether a run ended "finished" or "stopped" was a race.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Capture nothing."""
        yield


def bind_loopback(port: int) -> socket.socket:
    """Bind and listen on 127.0.0.1:`port` (0: any free port) and return the socket.

    `run --http` calls this before the sandbox starts, so a port in use is an error at once.

    Raises:
        GatewayError: the port cannot be bound.

    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol says
    # TCP. Without it, Nagle's algorithm holds each response's last segment until the client's
    # delayed ACK (40 ms) on a reused connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(LISTEN_BACKLOG)  # listening before on_ready: clients may connect at once
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    return sock


def terminal_prompter() -> Prompter | None:
    """Return a prompter on the terminal, or None when stdin/stderr are not a TTY."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask_blocking(message: str) -> str | None:
        sys.stderr.write(f"{message}\n> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    async def ask(message: str) -> str | None:
        return await anyio.to_thread.run_sync(ask_blocking, message)

    return ask
