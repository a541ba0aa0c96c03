"""The proxy's own epoll set for tunnel sockets (docs/architecture.md, decision 61)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from perstack_sandbox_proxy._poller import Poller

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEADLINE = 5.0


@contextmanager
def poller_on_a_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, Poller]]:
    """Yield a fresh event loop with a poller on it; close both afterwards."""
    loop = asyncio.new_event_loop()
    poller = Poller(loop)
    try:
        yield loop, poller
    finally:
        poller.close()
        loop.close()


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    """Run ``loop`` one iteration at a time until ``done()`` holds, failing after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    loop.run_until_complete(asyncio.sleep(0))
    while not done():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        loop.run_until_complete(asyncio.sleep(0))  # one iteration: the poller dispatches in it


@contextmanager
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Yield two connected non-blocking sockets; close them afterwards."""
    left, right = socket.socketpair()
    left.setblocking(False)  # noqa: FBT003 - the socket API takes a positional flag
    right.setblocking(False)  # noqa: FBT003
    with left, right:
        yield left, right


def test_a_swapped_reader_replaces_the_old_one() -> None:
    """A second add_reader for a socket replaces its callback: only the new one runs."""
    calls: list[str] = []
    with poller_on_a_loop() as (loop, poller), socket_pair() as (near, far):
        poller.add_reader(near.fileno(), lambda: calls.append("old"))

        def new() -> None:
            calls.append("new")
            near.recv(64)

        poller.add_reader(near.fileno(), new)
        far.sendall(b"x")
        run_until(loop, lambda: bool(calls))
        poller.remove_reader(near.fileno())
    assert calls == ["new"]


def test_a_writer_runs_when_writable_and_stops_once_removed() -> None:
    """add_writer calls back on a writable socket; after remove_writer it is not called again."""
    calls: list[int] = []
    with poller_on_a_loop() as (loop, poller), socket_pair() as (near, _far):

        def writable() -> None:
            calls.append(1)
            poller.remove_writer(near.fileno())

        poller.add_writer(near.fileno(), writable)
        run_until(loop, lambda: bool(calls))
        run_until(loop, lambda: True)  # one more iteration: nothing is watched any more
    assert calls == [1]


def test_a_dropped_socket_s_pending_event_never_reaches_a_new_socket_of_that_number() -> None:
    """Readiness seen for a socket dropped in the same dispatch is not given to its successor.

    Seen failing: with the `fd not in dropped` checks removed from `Poller.dispatch`, the
    successor's reader ran on its predecessor's pending event and recorded "stale".
    """
    calls: list[str] = []
    with (
        poller_on_a_loop() as (loop, poller),
        socket_pair() as (a, a_far),
        socket_pair() as (b, b_far),
        socket_pair() as (c, _c_far),
    ):
        numbers = {a.fileno(): b.fileno(), b.fileno(): a.fileno()}
        successors: list[int] = []

        def first(own: int) -> None:
            calls.append("first")
            other = numbers[own]
            for fd in (own, other):
                poller.remove_reader(fd)
            # A new socket takes the other's number before its pending event is handled.
            successors.append(os.dup2(c.fileno(), other))
            poller.add_reader(other, lambda: calls.append("stale"))

        poller.add_reader(a.fileno(), lambda: first(a.fileno()))
        poller.add_reader(b.fileno(), lambda: first(b.fileno()))
        a_far.sendall(b"x")
        b_far.sendall(b"x")
        run_until(loop, lambda: bool(calls))
        run_until(loop, lambda: True)  # the successor (not readable) gets nothing later
        poller.remove_reader(successors[0])
        os.close(successors[0])
        # The dup2 closed the other socket's descriptor: keep `with` from closing it twice.
        (b if successors[0] == b.fileno() else a).detach()
    assert calls == ["first"]


def test_a_failing_callback_goes_to_the_loop_s_handler_and_the_others_still_run() -> None:
    """One socket's callback raising does not stop the dispatch of the others."""
    reported: list[dict[str, Any]] = []
    calls: list[str] = []
    with (
        poller_on_a_loop() as (loop, poller),
        socket_pair() as (a, a_far),
        socket_pair() as (b, b_far),
    ):
        loop.set_exception_handler(lambda _loop, context: reported.append(context))

        def failing() -> None:
            a.recv(64)
            raise ValueError("boom")

        poller.add_reader(a.fileno(), failing)

        def other() -> None:
            calls.append("b")
            b.recv(64)

        poller.add_reader(b.fileno(), other)
        a_far.sendall(b"x")
        b_far.sendall(b"x")
        run_until(loop, lambda: bool(calls) and bool(reported))
        for sock in (a, b):
            poller.remove_reader(sock.fileno())
    assert calls == ["b"]
    assert isinstance(reported[0]["exception"], ValueError)


def test_a_closed_poller_dispatches_nothing() -> None:
    """After close() the loop no longer watches the set, and readers are forgotten."""
    calls: list[int] = []
    with poller_on_a_loop() as (loop, poller), socket_pair() as (near, far):
        poller.add_reader(near.fileno(), lambda: calls.append(1))
        poller.close()
        far.sendall(b"x")
        run_until(loop, lambda: True)
    assert calls == []


@pytest.mark.parametrize("twice", [False, True])
def test_removing_an_unwatched_socket_is_harmless(twice: bool) -> None:  # noqa: FBT001
    """remove_reader/remove_writer on a socket that is not watched change nothing."""
    with poller_on_a_loop() as (_loop, poller), socket_pair() as (near, _far):
        if twice:
            poller.add_reader(near.fileno(), lambda: None)
            poller.remove_reader(near.fileno())
        poller.remove_reader(near.fileno())
        poller.remove_writer(near.fileno())
        poller.add_reader(near.fileno(), lambda: None)  # still registrable afterwards
        poller.remove_reader(near.fileno())


def test_dropping_a_socket_closed_while_watched_does_not_raise() -> None:
    """A close before the drop (against the contract) must not break the closing path."""
    with poller_on_a_loop() as (_loop, poller):
        near, far = socket.socketpair()
        with far:
            fd = near.fileno()
            poller.add_reader(fd, lambda: None)
            poller.add_writer(fd, lambda: None)
            near.close()
            poller.remove_writer(fd)  # a modify of a number the kernel no longer watches
            poller.remove_reader(fd)
