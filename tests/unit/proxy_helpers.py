"""A proxy on loopback, run in a background event loop, with a stub resolver and an echo upstream.

Tests talk to it with ordinary blocking sockets (every read bounded by a socket timeout), so
hypothesis and plain pytest functions can use it without an async test runner.

Dialling: the proxy always dials port 443 of the address it checked. The harness connector
records that (address, port) and connects to the same address on the echo server's port, so
the test suite needs no privileged port and never leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perstack_sandbox_proxy._audit import AuditLog
from perstack_sandbox_proxy._policy import parse_policy
from perstack_sandbox_proxy._resolver import ResolveError
from perstack_sandbox_proxy._server import ProxyServer
from perstack_sandbox_proxy._tunnel import open_upstream, start_upstream

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence

    from perstack_sandbox_proxy._connection import Connection

PROXY_HOST = "127.0.0.1"
UPSTREAM_HOST = "127.0.0.2"
TEST_CIDR = "127.0.0.0/24"
ALLOWED = ("api.example.com", "*.example.org")
# Every read in a test is bounded by this; a healthy proxy answers in milliseconds.
IO_TIMEOUT = 10.0


class RecordingResolver:
    """A stub resolver that logs every query and answers from a table (or a default)."""

    def __init__(
        self,
        table: Mapping[str, Sequence[Sequence[str]]] | None = None,
        default: Sequence[str] | None = (UPSTREAM_HOST,),
    ) -> None:
        """Answer names in ``table`` (successive answer sets), others with ``default``."""
        self.table = dict(table or {})
        self.default = default
        self.queries: list[str] = []
        self.hang = False

    async def resolve(self, host: str) -> list[str]:
        """Log the query and answer it (or hang, to exercise the resolve timeout)."""
        self.queries.append(host)
        if self.hang:
            await asyncio.Event().wait()
        answers = self.table.get(host)
        if answers:
            nth = min(self.queries.count(host), len(answers)) - 1
            return list(answers[nth])
        if self.default is None:
            raise ResolveError(host)
        return list(self.default)


class ImmediateResolver(RecordingResolver):
    """The same table, also answered at once: the proxy then resolves and dials without a task.

    While ``hang`` is set it has no immediate answer, so the proxy falls back to awaiting
    :meth:`resolve` (which hangs).
    """

    def answer_now(self, host: str) -> list[str] | None:
        """Answer as :meth:`resolve` does, without a coroutine (None while hanging)."""
        if self.hang:
            return None
        self.queries.append(host)
        answers = self.table.get(host)
        if answers:
            nth = min(self.queries.count(host), len(answers)) - 1
            return list(answers[nth])
        if self.default is None:
            raise ResolveError(host)
        return list(self.default)


@dataclass
class EchoUpstream:
    """Echoes every byte back; records what each connection received."""

    received: list[bytearray] = field(default_factory=list)
    reverse_after_eof: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Echo (or, in reverse mode, answer only after the client's EOF)."""
        got = bytearray()
        self.received.append(got)
        try:
            while chunk := await reader.read(65536):
                got += chunk
                if not self.reverse_after_eof:
                    writer.write(chunk)
                    await writer.drain()
            if self.reverse_after_eof:
                writer.write(bytes(got[::-1]))
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


class ProxyHarness:
    """The proxy under test plus its upstream, in an event loop on a daemon thread."""

    def __init__(self, policy: dict[str, Any], resolver: RecordingResolver) -> None:
        """Prepare (but do not start) a proxy for ``policy`` answering with ``resolver``."""
        self.audit_stream = io.StringIO()
        self.resolver = resolver
        self.upstream = EchoUpstream()
        self.dials: list[tuple[str, int]] = []
        self.connect_hangs = False
        self.server = ProxyServer(
            parse_policy(policy),
            resolver,
            AuditLog("sbx-test", self.audit_stream),
            self._connect,
            self._connect_now,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.address: tuple[str, int] = ("", 0)
        self.upstream_port = 0

    async def _connect(self, address: str, port: int) -> Connection:
        self.dials.append((address, port))
        if self.connect_hangs:
            await asyncio.Event().wait()
        return await open_upstream(address, self.upstream_port)

    def _connect_now(self, address: str, port: int, loop: asyncio.AbstractEventLoop) -> Connection:
        """Dial at once (an `ImmediateResolver`'s answers, or a retry after a refusal)."""
        self.dials.append((address, port))
        return start_upstream(address, self.upstream_port, loop)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the harness loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(IO_TIMEOUT * 3)

    def start(self) -> None:
        """Start the loop, the echo upstream and the proxy."""
        self.thread.start()

        async def begin() -> None:
            upstream = await asyncio.start_server(
                self.upstream.handle, UPSTREAM_HOST, 0, backlog=1024
            )
            self.upstream_port = upstream.sockets[0].getsockname()[1]
            [self.address] = await self.server.start([(PROXY_HOST, 0)])

        self.run(begin())

    def stop(self) -> None:
        """Stop the proxy, cancel what is still running, and stop the loop."""

        async def end() -> None:
            await self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(end())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(IO_TIMEOUT)
        self.loop.close()

    def audit(self) -> list[dict[str, Any]]:
        """Return every audit line written so far, parsed (each line must be one JSON object)."""
        # One write() per line, so under the GIL a reader never sees half a line.
        text = self.audit_stream.getvalue()
        return [json.loads(line) for line in text.splitlines()]

    def decisions(self) -> list[dict[str, Any]]:
        """Return the decision lines of the audit."""
        return [line for line in self.audit() if line["event"] == "decision"]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds, failing after IO_TIMEOUT (polls every few ms)."""
        deadline = time.monotonic() + IO_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.002)

    def open(self) -> socket.socket:
        """Open a client connection to the proxy."""
        sock = socket.create_connection(self.address, timeout=IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def policy(
    allowed: Sequence[str] = ALLOWED, cidrs: Sequence[str] = (TEST_CIDR,), **limits: float
) -> dict[str, Any]:
    """Build a policy document (limits by their JSON names)."""
    return {
        "allowedDomains": list(allowed),
        "sandboxId": "sbx-test",
        "testAllowCidrs": list(cidrs),
        "limits": limits,
    }


@contextlib.contextmanager
def running_proxy(
    document: dict[str, Any] | None = None, resolver: RecordingResolver | None = None
) -> Iterator[ProxyHarness]:
    """Run a proxy for the duration of the block."""
    harness = ProxyHarness(document or policy(), resolver or RecordingResolver())
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def read_response_head(sock: socket.socket) -> bytes:
    """Read a response head (up to CRLFCRLF) or whatever arrives before EOF.

    One byte at a time, so that tunnel bytes right behind the head are left unread.
    """
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def read_until_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read everything until the peer closes (bounded by the socket timeout and ``limit``)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(response: bytes) -> int | None:
    """Return the status code of a response, or None when nothing came back."""
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


def exchange(harness: ProxyHarness, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection and return everything the proxy sends before closing."""
    with harness.open() as sock:
        sock.sendall(raw)
        return read_until_eof(sock)


def connect_request(target: str, host_header: str | None = None) -> bytes:
    """Build a CONNECT request (Host header defaults to the target)."""
    header = target if host_header is None else host_header
    return f"CONNECT {target} HTTP/1.1\r\nHost: {header}\r\n\r\n".encode("latin-1")


def client_hello(server_name: str | None) -> bytes:
    """Return a real ClientHello from Python's ssl module (no SNI when ``server_name`` is None)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_name is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def open_tunnel(harness: ProxyHarness, target: str, sni: str | None) -> socket.socket:
    """CONNECT to ``target``, expect 200, send a ClientHello for ``sni``; return the socket."""
    sock = harness.open()
    sock.sendall(connect_request(target))
    head = read_response_head(sock)
    assert status_of(head) == 200, head
    sock.sendall(client_hello(sni))
    return sock
