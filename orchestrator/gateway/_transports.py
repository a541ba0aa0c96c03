"""Serving the gateway: stdio, and streamable HTTP on 127.0.0.1 behind the bearer/Origin guard."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from perstack_sandbox.errors import GatewayError, UsageError
from perstack_sandbox.gateway._guard import BearerOriginGuard, loopback_origins
from perstack_sandbox.gateway._server import make_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from perstack_sandbox.gateway._core import Gateway, Prompter


MAX_PORT: Final = 65535
READ_CHUNK: Final = 65536
LISTEN_BACKLOG: Final = 128


async def serve_stdio(gateway: Gateway) -> None:
    """Serve the gateway over this process's stdin/stdout until the client closes it.

    stdin is read without a worker thread when it is a pipe or a socket, so that the run
    can end (its sandbox taken down, a signal) while the client is silent: a thread blocked
    in `read()` cannot be cancelled, and the process would wait for the client's next line.
    """
    server = make_server(gateway)
    with _stdin_lines() as lines:
        async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
            await server.run(read_stream, write_stream, server.create_initialization_options())


class StdinLines:
    """The lines of a non-blocking file descriptor, awaited on the event loop (cancellable)."""

    def __init__(self, fd: int) -> None:
        """Read from `fd`, which the caller made non-blocking."""
        self._fd = fd
        self._buffer = b""

    def __aiter__(self) -> StdinLines:
        """Iterate over lines."""
        return self

    async def __anext__(self) -> str:
        """Return the next line (with its newline), or stop at end of input."""
        while (end := self._buffer.find(b"\n")) < 0:
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                if not self._buffer:
                    raise StopAsyncIteration
                end = len(self._buffer) - 1
                break
            self._buffer += chunk
        line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
        return line.decode("utf-8", errors="replace")


@contextlib.contextmanager
def _stdin_lines() -> Iterator[StdinLines | None]:
    """Yield stdin as `StdinLines` (non-blocking meanwhile) when it is a pipe or a socket.

    Anything else gets None (the SDK's own reader): a file cannot be polled and ends anyway,
    and a terminal's non-blocking flag would be shared with the shell that owns it.
    """
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        yield None
        return
    was_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    try:
        yield StdinLines(fd)
    finally:
        with contextlib.suppress(OSError):
            os.set_blocking(fd, was_blocking)  # another process may share the pipe


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


def bind_loopback(port: int) -> socket.socket:
    """Bind and listen on 127.0.0.1:`port` (0: any free port) and return the socket.

    `run --http` calls this before the sandbox starts, so a port in use is an error at once.

    Raises:
        GatewayError: the port cannot be bound.

    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(LISTEN_BACKLOG)  # listening before on_ready: clients may connect at once
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    return sock


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
    `on_ready(url)` is called once the socket listens; setting `stop` shuts down cleanly.

    Raises:
        GatewayError: the port cannot be bound.

    """
    sock = sock if sock is not None else bind_loopback(port)
    actual = sock.getsockname()[1]
    origins = loopback_origins(actual)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"127.0.0.1:{actual}", f"localhost:{actual}"],
        allowed_origins=sorted(origins),
    )
    app = make_server(gateway).streamable_http_app(transport_security=security, host="127.0.0.1")
    guarded = BearerOriginGuard(app, token=token, allowed_origins=origins)
    # log_config=None: uvicorn's default dictConfig shuts down every existing handler, which
    # would close the run's tools.jsonl and skills.log for the rest of an HTTP run.
    config = uvicorn.Config(
        guarded, log_config=None, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        if stop is not None:

            async def watch() -> None:
                await stop.wait()
                server.should_exit = True

            group.start_soon(watch)
        if on_ready is not None:
            on_ready(f"http://127.0.0.1:{actual}/mcp")
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            group.cancel_scope.cancel()


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
