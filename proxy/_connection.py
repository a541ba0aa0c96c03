"""One TCP socket driven straight from the event loop's readiness callbacks, and the splice.

No asyncio transports, streams or per-connection tasks: a request is read and answered from
``add_reader``/``add_writer`` callbacks, so each step costs one loop iteration and no hop
through a future. :func:`splice` pairs two connections so that whatever one side receives is
sent to the other at once. Backpressure: when a side holds more than ``WRITE_HIGH_WATER``
unsent bytes, its peer is no longer read until it drains below ``WRITE_LOW_WATER``. EOF on one
side is passed on as a half-close; the tunnel ends when both sides are closed, or on the idle
timeout.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._idle import IdleWatch
    from ._poller import Poller

# The most one read takes from a socket (asyncio's own transport reads this much).
RECV_SIZE: Final = 256 * 1024
# Unsent bytes per socket before the other side stops being read; big enough for loopback
# throughput, small enough that a thousand tunnels cannot hold much memory.
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = WRITE_HIGH_WATER // 4
_WOULD_BLOCK: Final = (BlockingIOError, InterruptedError)


@dataclass
class TunnelStats:
    """Bytes moved each way and the time of the last byte (time.monotonic)."""

    up: int = 0
    down: int = 0
    last_activity: float = field(default_factory=time.monotonic)


class Connection:
    """One non-blocking TCP socket; its owner decides what a readable socket means."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        upstream: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        poller: Poller | None = None,
    ) -> None:
        """Wrap the connected, non-blocking ``sock``; ``upstream`` marks the dialled side.

        ``loop`` defaults to the running loop (on Python 3.11 each lookup is a getpid call).
        The socket is watched through ``poller`` when given (see :meth:`watch_with`), else
        through the loop's own readers and writers.
        """
        self.sock = sock
        self.upstream = upstream
        self.peer: Connection | None = None
        self.stats: TunnelStats | None = None
        # Called once, when the socket has been closed.
        self.on_closed: Callable[[], None] | None = None
        self.saw_eof = False
        self.is_closed = False
        self._fd = sock.fileno()
        self._loop = loop or asyncio.get_running_loop()
        self._watch: Poller | asyncio.AbstractEventLoop = poller or self._loop
        self._out = bytearray()
        self._reader: Callable[[], None] | None = None
        self._reading = False
        self._writing = False
        self._closing = False
        self._eof_pending = False

    def watch_with(self, poller: Poller) -> None:
        """Watch the socket through ``poller`` from now on (only while nothing is watched)."""
        if self._reading or self._writing:
            raise RuntimeError("watch_with: the socket is already watched")
        self._watch = poller

    # --- reading -------------------------------------------------------------------------

    def read_with(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the socket is readable, until paused or closed."""
        self._reader = callback
        if self._reading:  # swap the callback (no epoll_ctl: the watched events stay the same)
            self._watch.add_reader(self._fd, callback)
        else:
            self.resume_reading()

    @property
    def reading(self) -> bool:
        """Whether the socket is watched for input now."""
        return self._reading

    def pause_reading(self) -> None:
        """Stop watching the socket for input."""
        if self._reading:
            self._reading = False
            self._watch.remove_reader(self._fd)

    def park_reading(self) -> None:
        """Keep the socket watched between two steps, but let input only pause reading.

        What a pause and a later :meth:`read_with` do, for less: the loop keeps the socket's
        poll handle (uvloop closes it when nothing is watched, and a new one costs an ioctl
        and an epoll_ctl), and :meth:`read_with` just swaps the callback. Input that comes
        early (or EOF) stays in the kernel until the next step reads it.
        """
        if not (self.saw_eof or self._closing):
            self._reader = self.pause_reading
            self._reading = True
            self._watch.add_reader(self._fd, self.pause_reading)

    def resume_reading(self) -> None:
        """Watch the socket for input again (not after EOF or close)."""
        if not self._reading and self._reader and not (self.saw_eof or self._closing):
            self._reading = True
            self._watch.add_reader(self._fd, self._reader)

    def recv(self, size: int) -> bytes | None:
        """Return up to ``size`` bytes, None when nothing is there yet, b"" at EOF.

        A failed connection (reset, for instance) reads as EOF: no more bytes will come.
        """
        try:
            return self.sock.recv(size)
        except _WOULD_BLOCK:
            return None
        except OSError:
            return b""

    # --- writing -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` now, queueing what the socket does not take (dropped once closing)."""
        if self._closing or self.is_closed:
            return
        if not self._out:
            try:
                sent = self.sock.send(data)
            except _WOULD_BLOCK:
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            self._watch_writable(self._write_ready)
            self._out += memoryview(data)[sent:]
        else:
            self._out += data
        if len(self._out) > WRITE_HIGH_WATER and self.peer is not None:
            self.peer.pause_reading()

    def _write_ready(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except _WOULD_BLOCK:
            return
        except OSError:
            self.abort()
            return
        del self._out[:sent]
        if len(self._out) <= WRITE_LOW_WATER and self.peer is not None:
            self.peer.resume_reading()
        if self._out:
            return
        self._unwatch_writable()
        if self._eof_pending:
            self._shutdown_write()
        if self._closing:
            self._close_now()

    def handshake_result(self) -> int | None:
        """Return how the TCP handshake ended if it already has (0: connected), else None.

        On loopback or a same-host bridge the kernel completes the handshake inside the
        connect call: asking costs one system call and saves a loop iteration, a writer and a
        timer (docs/architecture.md, decision 60). A remote upstream answers None here.
        """
        try:
            self.sock.getpeername()
        except OSError:  # not connected: still under way (0) or failed (its error)
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return error or None
        return 0

    def when_connected(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with SO_ERROR once the TCP handshake has ended (0: connected)."""

        def ended() -> None:
            self.park_reading()  # before the writer goes, so that the poll handle stays
            self._unwatch_writable()
            callback(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

        self._watch_writable(ended)

    def _watch_writable(self, callback: Callable[[], None]) -> None:
        self._writing = True
        self._watch.add_writer(self._fd, callback)

    def _unwatch_writable(self) -> None:
        if self._writing:
            self._writing = False
            self._watch.remove_writer(self._fd)

    def write_eof(self) -> None:
        """Half-close: send EOF once everything queued has been sent."""
        if self._closing or self.is_closed:
            return
        if self._out:
            self._eof_pending = True
        else:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self._eof_pending = False
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()

    def detach(self) -> tuple[socket.socket, bytes]:
        """Stop driving the socket and hand it over with the bytes not sent yet (sealed path).

        Nothing watches the socket afterwards and this object is done with it: the caller owns
        the socket (see proxy/_sealed.py).
        """
        self.pause_reading()
        self._unwatch_writable()
        self._reader = None
        self.is_closed = self._closing = True
        pending, self._out = bytes(self._out), bytearray()
        return self.sock, pending

    # --- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close after flushing what is queued."""
        if self._closing or self.is_closed:
            return
        self._closing = True
        self.pause_reading()
        if not self._out:
            self._close_now()

    def abort(self) -> None:
        """Close at once, dropping anything unsent."""
        self._out.clear()
        self._close_now()

    def _close_now(self) -> None:
        if self.is_closed:
            return
        self.is_closed = self._closing = True
        self.pause_reading()
        self._unwatch_writable()
        self._reader = None
        self.sock.close()
        if self.peer is not None:  # a spliced side takes its peer down with it (after a flush)
            self.peer.close()
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()

    # --- spliced -------------------------------------------------------------------------

    def _forward(self) -> None:
        """Send what arrived to the peer (reader callback once spliced)."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except _WOULD_BLOCK:
            return
        except OSError:
            self.abort()
            return
        if not data:
            self._end_of_input()
            return
        peer, stats = self.peer, self.stats
        if peer is None or stats is None or peer._closing:  # noqa: SLF001 - same class
            return  # the other side is gone; what it can no longer take is dropped
        stats.last_activity = time.monotonic()
        if self.upstream:
            stats.down += len(data)
        else:
            stats.up += len(data)
        peer.write(data)

    def _end_of_input(self) -> None:
        """Pass EOF on as a half-close; close both once both directions have ended."""
        self.saw_eof = True
        self.pause_reading()
        peer = self.peer
        if peer is None:
            return
        peer.write_eof()
        if peer.saw_eof:
            self.close()
            peer.close()


def splice(
    client: Connection,
    upstream: Connection,
    stats: TunnelStats,
    idle: IdleWatch,
    on_done: Callable[[], None],
) -> None:
    """Pair ``client`` and ``upstream``; call ``on_done`` once both are closed.

    ``idle`` cuts the tunnel once no byte has moved for its timeout.
    """
    stats.last_activity = time.monotonic()
    client.peer, client.stats = upstream, stats
    upstream.peer, upstream.stats = client, stats
    idle.watch(client, upstream, stats)
    ended: list[bool] = []

    def closed() -> None:
        if client.is_closed and upstream.is_closed and not ended:
            ended.append(True)
            idle.forget(client)
            client.peer = upstream.peer = None  # no cycle left for the garbage collector
            on_done()

    client.on_closed = upstream.on_closed = closed
    for side, other in ((client, upstream), (upstream, client)):
        if side.is_closed:
            other.close()
        else:
            side.read_with(side._forward)  # noqa: SLF001 - the splice is part of this class
    closed()
