"""Idle tunnels are cut by one shared sweep (docs/architecture.md, decision 62)."""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import ExitStack

from perstack_sandbox_proxy._connection import Connection, TunnelStats
from perstack_sandbox_proxy._idle import IdleWatch

DEADLINE = 5.0
IDLE = 0.2


def _tunnel(stack: ExitStack, loop: asyncio.AbstractEventLoop) -> tuple[Connection, Connection]:
    """Return two Connections over a socket pair (closed by ``stack`` if still open)."""
    left, right = socket.socketpair()
    for sock in (left, right):
        sock.setblocking(False)  # noqa: FBT003 - the socket API takes a positional flag
        stack.callback(sock.close)
    return Connection(left, loop=loop), Connection(right, upstream=True, loop=loop)


def _run_until(loop: asyncio.AbstractEventLoop, done: Connection) -> None:
    """Run ``loop`` until ``done`` is closed, failing after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not done.is_closed:
        assert time.monotonic() < deadline, "not cut in time"
        loop.run_until_complete(asyncio.sleep(0.01))


def test_a_sweep_cuts_every_idle_tunnel_and_spares_the_active_and_the_forgotten() -> None:
    """Tunnels past their deadline are aborted on both sides; the others stay open.

    Seen failing: with the sweep's `deadline <= now` test inverted, the idle tunnels were
    never cut (the wait ran out).
    """
    loop = asyncio.new_event_loop()
    with ExitStack() as stack:
        stack.callback(loop.close)
        watch = IdleWatch(loop, IDLE)
        stack.callback(watch.close)
        idle = [_tunnel(stack, loop) for _ in range(2)]
        active, forgotten = _tunnel(stack, loop), _tunnel(stack, loop)
        long_ago = TunnelStats(last_activity=time.monotonic() - 10)
        for client, upstream in (*idle, forgotten):
            watch.watch(client, upstream, long_ago)
        watch.watch(*active, TunnelStats(last_activity=time.monotonic() + 60))
        watch.forget(forgotten[0])
        _run_until(loop, idle[1][1])
        assert all(side.is_closed for tunnel in idle for side in tunnel)
        assert not any(side.is_closed for side in (*active, *forgotten))
