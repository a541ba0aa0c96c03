"""One TCP connection: buffered reads while the request is checked, then a zero-task splice.

The proxy owns the protocol object of both its sockets. Before a tunnel is accepted it buffers
what arrives (bounded: reading pauses above ``limit``) and offers ``read``/``write``/``drain``.
Once :func:`splice` pairs two connections, every ``data_received`` is written straight to the
peer's transport. Backpressure is the transports' own: when the peer's write buffer passes its
high-water mark, reading from this side pauses until it drains. EOF on one side is passed on
as a half-close; the tunnel ends when both sides are closed, or on the idle timeout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from collections.abc import Callable

# Buffered before a tunnel is accepted: a request head plus a large ClientHello fit in this.
READ_LIMIT: Final = 128 * 1024
# Per-socket write buffer before the other side stops being read; big enough for loopback
# throughput, small enough that a thousand tunnels cannot hold much memory.
WRITE_HIGH_WATER: Final = 256 * 1024


@dataclass
class TunnelStats:
    """Bytes moved each way and the time of the last byte (time.monotonic)."""

    up: int = 0
    down: int = 0
    last_activity: float = field(default_factory=time.monotonic)


class Connection(asyncio.Protocol):
    """The protocol of one socket, readable like a stream until it is spliced."""

    def __init__(
        self, *, upstream: bool = False, on_connect: Callable[[Connection], None] | None = None
    ) -> None:
        """Create a protocol; ``upstream`` marks the dialled side.

        ``on_connect`` is called once the transport exists.
        """
        self.upstream = upstream
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self.peer: Connection | None = None
        self.stats: TunnelStats | None = None
        self._buffer = bytearray()
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport and set its write buffer high-water mark."""
        self.transport = cast("asyncio.Transport", transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        """Forward to the peer when spliced, else buffer (pausing above the limit)."""
        peer, stats = self.peer, self.stats
        if peer is not None and stats is not None and peer.transport is not None:
            if peer.transport.is_closing():
                return  # the other side is gone; what it can no longer take is dropped
            stats.last_activity = time.monotonic()
            _count(stats, self, len(data))
            peer.transport.write(data)
            return
        self._buffer += data
        if len(self._buffer) > READ_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        """Pass EOF on as a half-close when spliced; keep the socket open for writing."""
        self._eof = True
        self._wake()
        if self.peer is not None:
            self.peer.half_close()
            if self.peer.saw_eof:  # both directions ended: nothing more can move
                self.close()
                self.peer.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - protocol
        """Wake every waiter; a spliced peer is closed after it flushes what it holds."""
        self._eof = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("connection lost"))
        if not self._closed.done():
            self._closed.set_result(None)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        """Our write buffer is full: stop reading the side that fills it."""
        self._writing_paused = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        """Our write buffer drained: read the other side again."""
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # --- stream-like use before the splice ----------------------------------------------

    async def read(self, size: int) -> bytes:
        """Return up to ``size`` buffered bytes, waiting for some; b"" at EOF."""
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        if self._reading_paused and len(self._buffer) <= READ_LIMIT and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark.

        Raises:
            ConnectionResetError: the connection was lost while waiting.

        """
        if self._closed.done():
            raise ConnectionResetError("connection lost")
        if self._writing_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def half_close(self) -> None:
        """Send EOF (after anything buffered) if the transport supports it."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        """Close after flushing the write buffer."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping anything unsent."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self._closed)

    async def close_within(self, seconds: float) -> None:
        """Close after flushing, but abort if the peer has not taken the bytes in time."""
        if self._closed.done():
            return
        self.close()
        try:
            async with asyncio.timeout(seconds):
                await self.wait_closed()
        except TimeoutError:
            self.abort()

    @property
    def closed(self) -> asyncio.Future[None]:
        """A future that completes when the connection is lost."""
        return self._closed

    @property
    def saw_eof(self) -> bool:
        """Whether the remote side has finished sending."""
        return self._eof

    @property
    def is_closed(self) -> bool:
        """Whether the connection has been lost."""
        return self._closed.done()

    def peername(self) -> object:
        """Return the remote address, as the transport reports it."""
        return self.transport.get_extra_info("peername") if self.transport else None

    def sockname(self) -> object:
        """Return the local address, as the transport reports it."""
        return self.transport.get_extra_info("sockname") if self.transport else None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take_buffered(self) -> tuple[bytes, bool]:
        """Hand over what is buffered and whether EOF was seen; reading resumes."""
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data, self._eof


def _count(stats: TunnelStats, source: Connection, size: int) -> None:
    if source.upstream:
        stats.down += size
    else:
        stats.up += size


def _pair(client: Connection, upstream: Connection, stats: TunnelStats) -> None:
    """Make each side forward to the other, handing over what each has buffered so far."""
    stats.last_activity = time.monotonic()
    for side, other in ((client, upstream), (upstream, client)):
        side.stats, side.peer = stats, other
    for side, other in ((client, upstream), (upstream, client)):
        pending, eof = side.take_buffered()
        if pending:
            _count(stats, side, len(pending))
            other.write(pending)
        if eof:
            other.half_close()
        if side.is_closed:
            other.close()


class _IdleCutter:
    """Aborts both sides once no byte has moved for ``idle_timeout`` seconds."""

    def __init__(
        self, sides: tuple[Connection, Connection], stats: TunnelStats, idle: float
    ) -> None:
        self._sides, self._stats, self._idle = sides, stats, idle
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(idle, self._check)

    def _check(self) -> None:
        remaining = self._stats.last_activity + self._idle - time.monotonic()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._check)
            return
        for side in self._sides:
            side.abort()

    def cancel(self) -> None:
        self._timer.cancel()


async def splice(
    client: Connection, upstream: Connection, stats: TunnelStats, idle_timeout: float
) -> None:
    """Pair ``client`` and ``upstream`` until both are closed or the tunnel goes idle."""
    _pair(client, upstream, stats)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish_when_both_closed(_: object = None) -> None:
        if client.is_closed and upstream.is_closed and not done.done():
            done.set_result(None)

    client.closed.add_done_callback(finish_when_both_closed)
    upstream.closed.add_done_callback(finish_when_both_closed)
    finish_when_both_closed()
    cutter = _IdleCutter((client, upstream), stats, idle_timeout)
    try:
        await done
    finally:
        cutter.cancel()
