"""The two sides of a sealed tunnel: TLS as the server over memory BIOs, and buffered reads.

The client's ClientHello has already been read by the session when the tunnel is handed over
(proxy/_session.py), so the client side cannot be a TLS transport: it is an ``ssl.SSLObject``
over memory BIOs, fed that hello first. ``Side`` gives either end buffered, time-bounded
reads (a head up to a marker, an exact size) for the HTTP/1.1 relay (proxy/_sealed.py).
`handshakes` runs the client's handshake and the upstream's at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING, Final

from ._http import Refusal

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable

    _Receive = Callable[[], Awaitable[bytes]]
    _Send = Callable[[bytes], Awaitable[None]]
    _Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

READ_SIZE: Final = 65536


class Side:
    """One side of the relay: reads with a buffer, writes, and counts bytes."""

    def __init__(self, receive: _Receive, send: _Send, idle: float) -> None:
        """Wrap two coroutines; each read waits at most ``idle`` seconds."""
        self._receive, self._send, self._idle = receive, send, idle
        self.buffer = b""

    async def read_some(self) -> bytes:
        """Return the buffered bytes, or the next bytes read (b"" at EOF)."""
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        async with asyncio.timeout(self._idle):
            return await self._receive()

    async def read_until(self, marker: bytes, limit: int) -> bytes | None:
        """Return bytes up to and including ``marker``; None at EOF before any byte.

        Raises:
            Refusal: more than ``limit`` bytes without the marker, or EOF inside it.

        """
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise Refusal(431, "sealed-head-too-large")
            data = await self.read_some_raw()
            if not data:
                if self.buffer:
                    raise Refusal(400, "sealed-incomplete")
                return None
            self.buffer += data
        found, self.buffer = self.buffer[: end + len(marker)], self.buffer[end + len(marker) :]
        return found

    async def read_some_raw(self) -> bytes:
        """Read from the socket (past the buffer)."""
        async with asyncio.timeout(self._idle):
            return await self._receive()

    async def read_exactly(self, size: int) -> bytes:
        """Return exactly ``size`` bytes.

        Raises:
            Refusal: EOF first.

        """
        while len(self.buffer) < size:
            data = await self.read_some_raw()
            if not data:
                raise Refusal(None, "sealed-truncated-body")
            self.buffer += data
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    async def write(self, data: bytes) -> None:
        """Send ``data``."""
        if data:
            await self._send(data)


class ServerTls:
    """TLS as the server, over a plain asyncio stream, via memory BIOs (the hello is read)."""

    def __init__(
        self,
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        context: ssl.SSLContext,
        hello: bytes,
    ) -> None:
        """Start with ``hello`` already in the incoming BIO."""
        self._reader, self._writer = streams
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._in.write(hello)
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)

    async def handshake(self) -> None:
        """Complete the handshake.

        Raises:
            ssl.SSLError: the client refused our certificate or spoke something else.
            ConnectionError: the client went away.

        """
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            else:
                await self._flush()
                return

    async def receive(self) -> bytes:
        """Return decrypted bytes; b"" at the client's close_notify or EOF."""
        while True:
            try:
                data = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            else:
                return data + self._more(READ_SIZE - len(data)) if data else data

    def _more(self, room: int) -> bytes:
        """Return the records already received, up to ``room`` bytes (one read is one record)."""
        parts = []
        while room > 0:
            try:
                part = self._tls.read(room)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not part:
                break
            parts.append(part)
            room -= len(part)
        return b"".join(parts)

    async def send(self, data: bytes) -> None:
        """Encrypt and send ``data``."""
        self._tls.write(data)
        await self._flush()

    async def _fill(self) -> bool:
        data = await self._reader.read(READ_SIZE)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def _flush(self) -> None:
        pending = self._out.read()
        if pending:
            self._writer.write(pending)
            await self._writer.drain()

    def close(self) -> None:
        """Close the socket (no close_notify wait: the peer may be gone)."""
        with contextlib.suppress(ssl.SSLError, OSError):
            self._tls.unwrap()
            self._writer.write(self._out.read())
        self._writer.close()


async def handshakes(
    client: ServerTls, upstream_sock: socket.socket, context: ssl.SSLContext, host: str
) -> _Streams:
    """Complete the client's handshake and the upstream's at once; return the upstream streams.

    The upstream handshake needs nothing from the client's: every check has passed before the
    tunnel is handed over, and no byte of the client's goes up before both have ended. Run one
    after the other, a sealed setup waited for both in turn (docs/architecture.md, decision 59).

    Raises:
        ssl.SSLError: either handshake failed (the client's is reported first).
        OSError: either side went away.

    """
    upstream = asyncio.ensure_future(
        asyncio.open_connection(sock=upstream_sock, ssl=context, server_hostname=host)
    )
    try:
        await client.handshake()
    except BaseException:
        # Let the upstream attempt end (its transport closed) before the caller closes the
        # socket, as when the two ran in turn.
        upstream.cancel()
        await asyncio.wait([upstream])
        if not upstream.cancelled() and upstream.exception() is None:
            upstream.result()[1].close()
        raise
    return await upstream
