"""Copying bytes both ways through an established tunnel.

Each direction awaits ``drain`` after every write, so a slow reader slows its writer down
instead of filling the proxy's memory. EOF in one direction is passed on as a half-close
while the other direction keeps flowing. The tunnel ends when both directions have ended,
when either side fails, or when no byte has moved either way for the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Final

CHUNK: Final = 256 * 1024


@dataclass
class TunnelStats:
    """Bytes moved each way and the time of the last byte (time.monotonic)."""

    up: int = 0
    down: int = 0
    last_activity: float = field(default_factory=time.monotonic)


class _IdleError(Exception):
    """No byte moved either way for the idle timeout."""


async def _pump(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    stats: TunnelStats,
    idle_timeout: float,
    *,
    upstream: bool,
) -> None:
    while True:
        remaining = stats.last_activity + idle_timeout - time.monotonic()
        if remaining <= 0:
            raise _IdleError
        try:
            async with asyncio.timeout(remaining):
                chunk = await source.read(CHUNK)
        except TimeoutError:
            continue  # the other direction may have moved; the loop re-checks the deadline
        if not chunk:
            if sink.can_write_eof() and not sink.is_closing():
                sink.write_eof()
            return
        stats.last_activity = time.monotonic()
        if upstream:
            stats.up += len(chunk)
        else:
            stats.down += len(chunk)
        sink.write(chunk)
        await sink.drain()


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    stats: TunnelStats,
    idle_timeout: float,
) -> None:
    """Copy bytes between ``client`` and ``upstream`` until the tunnel ends, then close both."""
    tasks = [
        asyncio.create_task(_pump(client[0], upstream[1], stats, idle_timeout, upstream=True)),
        asyncio.create_task(_pump(upstream[0], client[1], stats, idle_timeout, upstream=False)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        # return_exceptions: a reset or idle pump ends the tunnel quietly; our own
        # cancellation still propagates from gather itself.
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_writer(upstream[1])


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait briefly for it, ignoring a peer that has already gone."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


# A closing socket gets this long to flush; a peer that does not read loses the rest.
CLOSE_TIMEOUT: Final = 5.0
