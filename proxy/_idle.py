"""Cutting idle tunnels: one timer for every spliced tunnel of the proxy, not one each.

A tunnel is cut once no byte has moved either way for the idle timeout. A timer per tunnel
(one scheduled and one cancelled on every CONNECT) did that exactly; here one sweep runs when
the earliest deadline of all the tunnels comes, and cuts every tunnel past its own. Sweeps are
at least ``min(MAX_SLACK, idle / 8)`` apart, so a tunnel is cut at most that late
(docs/architecture.md, decision 62).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio

    from ._connection import Connection, TunnelStats

# The most a tunnel outlives its idle timeout, in seconds (less for short timeouts).
MAX_SLACK: Final = 1.0


class IdleWatch:
    """The spliced tunnels of one proxy, each cut once idle for ``idle`` seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle: float) -> None:
        """Watch nothing yet; sweeps run on ``loop``."""
        self._loop, self._idle = loop, idle
        self._slack = min(MAX_SLACK, idle / 8)
        self._tunnels: dict[Connection, tuple[Connection, TunnelStats]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, client: Connection, upstream: Connection, stats: TunnelStats) -> None:
        """Cut ``client`` and ``upstream`` once ``stats.last_activity`` is ``idle`` old."""
        self._tunnels[client] = (upstream, stats)
        if self._timer is None:  # else it fires no later than this tunnel's deadline
            self._timer = self._loop.call_later(self._idle, self._sweep)

    def forget(self, client: Connection) -> None:
        """Stop watching the tunnel of ``client`` (it has closed)."""
        self._tunnels.pop(client, None)

    def close(self) -> None:
        """Stop sweeping (the proxy is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tunnels.clear()

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        earliest: float | None = None
        idle: list[tuple[Connection, Connection]] = []
        for client, (upstream, stats) in self._tunnels.items():
            deadline = stats.last_activity + self._idle
            if deadline <= now:
                idle.append((client, upstream))
            elif earliest is None or deadline < earliest:
                earliest = deadline
        for client, upstream in idle:
            self._tunnels.pop(client, None)
            client.abort()
            upstream.abort()
        if earliest is not None:
            self._timer = self._loop.call_later(max(earliest - now, self._slack), self._sweep)
