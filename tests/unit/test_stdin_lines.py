"""stdin read on the event loop: whole lines, and a wait that a cancellation ends.

A `run` whose sandbox was taken down must not wait for its client's next line.
"""

from __future__ import annotations

import contextlib
import os

import anyio
import pytest

from perstack_sandbox.gateway._transports import StdinLines

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Run on asyncio (the orchestrator's backend)."""
    return "asyncio"


@pytest.fixture
def pipe():
    """Yield a (non-blocking read end, write end) pair; close both after the test."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_lines_come_whole_and_in_order_across_chunks(pipe) -> None:
    """Lines split over writes are joined; the last line at end of input has no newline."""
    read_end, write_end = pipe
    os.write(write_end, b'{"a": 1}\n{"b"')
    os.write(write_end, b': 2}\n{"c": 3}')
    os.close(write_end)
    with anyio.fail_after(5):
        lines = [line async for line in StdinLines(read_end)]
    assert lines == ['{"a": 1}\n', '{"b": 2}\n', '{"c": 3}']


async def test_waiting_for_a_silent_client_can_be_cancelled(pipe) -> None:
    """With nothing written, the wait ends when its scope is cancelled (no thread to join)."""
    read_end, _write_end = pipe
    lines = StdinLines(read_end)
    with anyio.fail_after(5):  # a thread blocked in read() would hang here
        async with anyio.create_task_group() as group:
            group.start_soon(anext, lines)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
    assert group.cancel_scope.cancel_called
