"""How many connections the proxy accepts per readiness callback (docs/architecture.md, 62)."""

from __future__ import annotations

import socket
from contextlib import ExitStack

from perstack_sandbox_proxy._server import ACCEPT_BATCH, _queued


def test_the_batch_is_the_listener_s_queue_length_at_least_one() -> None:
    """An empty queue still allows one accept; two queued connections allow exactly two.

    Seen failing: with `_queued` answering ACCEPT_BATCH always, the empty queue got 64.
    """
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        assert _queued(listener) == 1
        for _ in range(2):
            stack.enter_context(socket.create_connection(listener.getsockname()[:2]))
        assert _queued(listener) == 2


def test_a_long_queue_is_taken_one_batch_at_a_time() -> None:
    """More queued connections than a batch: one callback takes ACCEPT_BATCH of them."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(ACCEPT_BATCH * 2)
        for _ in range(ACCEPT_BATCH + 1):
            stack.enter_context(socket.create_connection(listener.getsockname()[:2]))
        assert _queued(listener) == ACCEPT_BATCH
