"""The terminating path of a sealed tunnel: TLS on both sides, HTTP/1.1 in between.

The session hands over both sockets after every CONNECT check and the SNI check have passed
(proxy/_session.py), with the ClientHello it has already read. The client side is TLS over a
memory BIO (the hello is fed in first); the upstream side is a verified TLS connection to the
checked address, named by the CONNECT host. Each request: read the head (bounded), refuse a
Host or request target naming another host (proxy/_sealed_target.py) or another skill's
placeholder, substitute this skill's own
placeholders, forward; the response head and body are masked (proxy/_seal.py). Keep-alive,
chunked bodies, interim 1xx answers (relayed while the request body still flows) and upgrades
(WebSocket: relayed as bytes after 101) work; what this module cannot frame ends the connection.
The two sides' I/O is proxy/_sealed_io.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ._http import Refusal, response
from ._seal import Masker, SealState, mask, substitute
from ._sealed_io import READ_SIZE, ServerTls, Side, handshakes
from ._sealed_target import in_origin_form, is_target

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable

    from ._audit import AuditLog
    from ._connection import TunnelStats
    from ._policy import Limits

    _Count = Callable[[int], None]

# Heads of API requests are small; a larger one is refused rather than buffered.
MAX_HEAD_BYTES: Final = 65536
HANDSHAKE_TIMEOUT: Final = 10.0
_NO_BODY_STATUS: Final = frozenset({204, 304})


class ForeignPlaceholder(Refusal):
    """A request carries another skill's placeholder (``owner`` names that skill)."""

    def __init__(self, owner: str) -> None:
        """Refuse with 403, naming the owner in the audit only."""
        super().__init__(403, "foreign-placeholder")
        self.owner = owner


@dataclass
class SealedTunnel:
    """What the relay of one terminated tunnel needs."""

    conn: int
    skill: str
    host: str
    seal: SealState
    audit: AuditLog
    stats: TunnelStats
    limits: Limits

    def count_up(self, size: int) -> None:
        """Count ``size`` bytes sent upstream."""
        self.stats.up += size

    def count_down(self, size: int) -> None:
        """Count ``size`` bytes sent to the client."""
        self.stats.down += size


async def relay(
    tunnel: SealedTunnel,
    client_sock: socket.socket,
    upstream_sock: socket.socket,
    early: tuple[bytes, bytes],
) -> None:
    """Terminate the client's TLS, open verified TLS upstream, relay requests until done.

    ``early`` is (bytes still owed to the client, the ClientHello already read from it).
    """
    pending, hello = early
    ca, upstream_context = tunnel.seal.ca, tunnel.seal.upstream
    assert ca is not None  # noqa: S101 - applies() checked it
    assert upstream_context is not None  # noqa: S101
    try:
        streams = await asyncio.open_connection(sock=client_sock)
    except BaseException:
        client_sock.close()
        upstream_sock.close()
        raise
    streams[1].write(pending)
    client = ServerTls(streams, ca.server_context(tunnel.host), hello)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            up_reader, up_writer = await handshakes(
                client, upstream_sock, upstream_context, tunnel.host
            )
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        tunnel.audit.sealed(tunnel.conn, tunnel.skill, tunnel.host, reason=_tls_reason(exc))
        client.close()
        upstream_sock.close()
        return
    except BaseException:  # cancelled (the proxy stops): nothing may stay open
        client.close()
        upstream_sock.close()
        raise
    idle = tunnel.limits.idle_timeout

    async def send_up(data: bytes) -> None:
        up_writer.write(data)
        await up_writer.drain()

    near = Side(client.receive, client.send, idle)
    far = Side(lambda: up_reader.read(READ_SIZE), send_up, idle)
    try:
        await _exchanges(tunnel, near, far)
    except Refusal as refusal:
        owner = refusal.owner if isinstance(refusal, ForeignPlaceholder) else None
        tunnel.audit.sealed(
            tunnel.conn, tunnel.skill, tunnel.host, reason=refusal.reason, owner=owner
        )
        if refusal.status is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                await near.write(response(refusal.status, refusal.reason))
    except (OSError, ssl.SSLError, TimeoutError):
        pass
    finally:
        client.close()
        upstream_context.remember(tunnel.host, up_writer.get_extra_info("ssl_object"))
        up_writer.close()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "upstream-certificate-refused"
    if isinstance(exc, TimeoutError):
        return "sealed-handshake-timeout"
    return "sealed-handshake-failed"


async def _exchanges(tunnel: SealedTunnel, near: Side, far: Side) -> None:
    """Relay request/response exchanges until either side closes or an upgrade happens."""
    while True:
        head = await near.read_until(b"\r\n\r\n", MAX_HEAD_BYTES)
        if head is None:
            return
        head, method, request_framing = _checked_request(tunnel, head)
        await far.write(head)
        tunnel.stats.up += len(head)
        body = asyncio.ensure_future(_relay_body(near, far, request_framing, None, tunnel.count_up))
        try:
            status, keep = await _relay_response(tunnel, near, far, method)
        finally:
            # An answer before the whole request body (an early error): the rest of that body
            # would read as the next request head, so the connection ends after this answer.
            unfinished = not body.done()
            if unfinished:
                body.cancel()
        await asyncio.gather(body, return_exceptions=True)
        if unfinished:
            return
        if status == 101:  # noqa: PLR2004 - Switching Protocols: bytes from here on
            await _pump(near, far, tunnel)
            return
        if not keep:
            return


def _checked_request(tunnel: SealedTunnel, head: bytes) -> tuple[bytes, str, _Framing]:
    """Check one request head and substitute this skill's placeholders.

    Raises:
        Refusal: a malformed head, a Host or target naming another host, another skill's
            placeholder.

    """
    method, headers = _parse(head, request=True)
    host = _header(headers, b"host")
    if host is None or not is_target(host.decode("latin-1"), tunnel.host):
        raise Refusal(421, "sealed-host-mismatch")
    head = in_origin_form(head, method, tunnel.host)
    head, used, owner = substitute(head, tunnel.seal, tunnel.skill)
    if owner is not None:
        raise ForeignPlaceholder(owner)
    if used:
        tunnel.audit.sealed(tunnel.conn, tunnel.skill, tunnel.host, variables=used)
    # Ask for an identity body so that a response body can be masked (decision 37).
    head = _set_identity_encoding(head)
    return head, method, _framing(headers, request=True)


_Framing = tuple[str, int]  # ("length", n) | ("chunked", 0) | ("close", 0) | ("none", 0)


def _parse(head: bytes, *, request: bool) -> tuple[str, list[tuple[bytes, bytes]]]:
    """Return the method (request) or status (response) and the headers (names lowercased).

    Raises:
        Refusal: the head is not HTTP/1.x.

    """
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    version = parts[2] if request and len(parts) == 3 else parts[0]  # noqa: PLR2004
    if len(parts) < 2 or not version.startswith(b"HTTP/1."):  # noqa: PLR2004
        raise Refusal(400 if request else 502, "sealed-not-http1")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise Refusal(400 if request else 502, "sealed-bad-header")
        headers.append((name.lower(), value.strip()))
    return parts[0 if request else 1].decode("latin-1"), headers


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = [value for key, value in headers if key == name]
    return found[0] if len(found) == 1 else None


def _framing(headers: list[tuple[bytes, bytes]], *, request: bool) -> _Framing:
    """Return how the body of a message is delimited (RFC 9112, section 6).

    Raises:
        Refusal: both or conflicting lengths (request smuggling's raw material).

    """
    encodings = [value.lower() for key, value in headers if key == b"transfer-encoding"]
    lengths = {value for key, value in headers if key == b"content-length"}
    if encodings:
        if lengths or encodings[-1].split(b",")[-1].strip() != b"chunked":
            raise Refusal(400, "sealed-ambiguous-length")
        return ("chunked", 0)
    if len(lengths) > 1 or (lengths and not next(iter(lengths)).isdigit()):
        raise Refusal(400, "sealed-ambiguous-length")
    if lengths:
        return ("length", int(next(iter(lengths))))
    return ("none", 0) if request else ("close", 0)


def _set_identity_encoding(head: bytes) -> bytes:
    lines = [
        line
        for line in head[:-4].split(b"\r\n")
        if not line.lower().startswith(b"accept-encoding:")
    ]
    return b"\r\n".join([*lines, b"Accept-Encoding: identity"]) + b"\r\n\r\n"


async def _relay_response(
    tunnel: SealedTunnel, near: Side, far: Side, method: str
) -> tuple[int, bool]:
    """Relay 1xx heads and the final response (head masked, body masked); return status, keep.

    Raises:
        Refusal: the upstream closed or sent what is not HTTP/1.1 (502), or a compressed body.

    """
    values = tunnel.seal.masking
    while True:
        head = await far.read_until(b"\r\n\r\n", MAX_HEAD_BYTES)
        if head is None:
            raise Refusal(502, "sealed-upstream-closed")
        status_text, headers = _parse(head, request=False)
        status = int(status_text) if status_text.isdigit() else 0
        head = mask(head, values)
        await near.write(head)
        tunnel.stats.down += len(head)
        if 100 <= status < 200 and status != 101:  # noqa: PLR2004 - interim responses
            continue
        break
    if status == 101:  # noqa: PLR2004
        return status, False
    encoding = _header(headers, b"content-encoding")
    if encoding not in (None, b"identity") and method != "HEAD":
        # A compressed body cannot be masked: end here rather than pass it on unread.
        raise Refusal(None, "sealed-encoded-response")
    framing = (
        ("none", 0)
        if method == "HEAD" or status in _NO_BODY_STATUS
        else _framing(headers, request=False)
    )
    await _relay_body(far, near, framing, Masker(values), tunnel.count_down)
    connection = (_header(headers, b"connection") or b"").lower()
    return status, framing[0] != "close" and connection != b"close"


async def _relay_body(
    source: Side, sink: Side, framing: _Framing, masker: Masker | None, count: _Count
) -> None:
    """Copy one body from ``source`` to ``sink``, masked when ``masker`` is given."""
    kind, size = framing
    if kind == "none":
        return

    async def emit(data: bytes) -> None:
        out = masker.feed(data) if masker is not None else data
        await sink.write(_chunk(out) if kind == "chunked" and out else out)
        count(len(data))

    if kind == "length":
        await _copy_sized(source, size, emit)
    elif kind == "chunked":
        await _dechunk(source, emit)
    else:
        while data := await source.read_some():
            await emit(data)
    tail = masker.flush() if masker is not None else b""
    if kind == "chunked":
        await sink.write((_chunk(tail) if tail else b"") + b"0\r\n\r\n")
    else:
        await sink.write(tail)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _copy_sized(source: Side, size: int, emit: Callable[[bytes], Awaitable[None]]) -> None:
    """Pass exactly ``size`` bytes of ``source`` to ``emit``.

    Raises:
        Refusal: the source ended first.

    """
    remaining = size
    while remaining:
        data = await source.read_some()
        if not data:
            raise Refusal(None, "sealed-truncated-body")
        if len(data) > remaining:
            source.buffer, data = data[remaining:] + source.buffer, data[:remaining]
        remaining -= len(data)
        await emit(data)


async def _dechunk(source: Side, emit: Callable[[bytes], Awaitable[None]]) -> None:
    """Read a chunked body from ``source``, calling ``emit`` with each piece of data.

    Raises:
        Refusal: a malformed chunk.

    """
    while True:
        line = await source.read_until(b"\r\n", 1024)
        size_text = (line or b"").split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise Refusal(None, "sealed-bad-chunk") from exc
        if size == 0:
            while (trailer := await source.read_until(b"\r\n", MAX_HEAD_BYTES)) not in (
                b"\r\n",
                None,
            ):
                del trailer  # trailers are dropped: a masked copy is not worth the risk
            return
        remaining = size
        while remaining:
            piece = await source.read_exactly(min(remaining, READ_SIZE))
            remaining -= len(piece)
            await emit(piece)
        if await source.read_exactly(2) != b"\r\n":
            raise Refusal(None, "sealed-bad-chunk")


async def _pump(near: Side, far: Side, tunnel: SealedTunnel) -> None:
    """After an upgrade, copy bytes both ways until either side ends."""

    async def copy(source: Side, sink: Side, *, up: bool) -> None:
        while data := await source.read_some():
            await sink.write(data)
            if up:
                tunnel.stats.up += len(data)
            else:
                tunnel.stats.down += len(data)

    done, pending = await asyncio.wait(
        [
            asyncio.ensure_future(copy(near, far, up=True)),
            asyncio.ensure_future(copy(far, near, up=False)),
        ],
        return_when=asyncio.FIRST_COMPLETED,
    )
    for task in pending:
        task.cancel()
    await asyncio.gather(*done, *pending, return_exceptions=True)
