"""Start slots: how many sandboxes start at the same time.

Starting a sandbox is a burst of CPU: its two containers, its proxy's interpreter, and every
skill's runtime (about 3 CPU-seconds for the example Expert, most of it in the skills), and
each step has a deadline (the proxy's readiness, each skill's MCP handshake). Forty sandboxes
started at once on two cores miss those deadlines, although the host runs them all well once
they are up. So a start holds a slot from before its first engine object until its skills
have answered, and waits for one when all are taken; the total time is the same, and no start
is starved past its deadline.

A slot is an exclusive `flock` on one of `$PERSTACK_SANDBOX_START_SLOTS` files (default: twice
the CPU count; 0 turns the limit off) in the state directory, so every process of one user
shares them, and the kernel frees the slot of a process that dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from typing import TYPE_CHECKING, Final

import anyio

from perstack_sandbox.errors import EngineError, UsageError
from perstack_sandbox.state import FILE_MODE, private_folder, state_dir

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

SLOTS_ENV: Final = "PERSTACK_SANDBOX_START_SLOTS"
SLOTS_DIR: Final = "start-slots"
POLL_S: Final = 0.1  # plus up to as much again at random, so waiters do not move in step
WAIT_TIMEOUT_S: Final = 1800.0  # hundreds of starts queued on a small host, with margin


def slot_count() -> int:
    """Return how many starts may run at once (`$PERSTACK_SANDBOX_START_SLOTS`; 0: no limit).

    Raises:
        UsageError: the variable is not a whole number.

    """
    text = os.environ.get(SLOTS_ENV, "").strip()
    if not text:
        return 2 * (os.cpu_count() or 1)
    if not text.isdigit():
        raise UsageError(f"{SLOTS_ENV}={text!r}: want a whole number (0: no limit)")
    return int(text)


def _try_take(folder: Path, count: int) -> int | None:
    """Lock a free slot file and return its descriptor, or None when all are taken."""
    first = secrets.randbelow(count)
    for offset in range(count):
        path = folder / f"slot-{(first + offset) % count}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd
    return None


@contextlib.asynccontextmanager
async def start_slot() -> AsyncIterator[Callable[[], None]]:
    """Wait for a start slot; yield a function that gives it back early (also done on exit).

    Call the function once the sandbox's skills have answered: the start is over, and the
    next one may go.

    Raises:
        UsageError: `$PERSTACK_SANDBOX_START_SLOTS` is malformed, or the state directory is
            not usable.
        EngineError: no slot came free within `WAIT_TIMEOUT_S`.

    """
    count = slot_count()
    folder = state_dir() / SLOTS_DIR
    fd: int | None = None
    if count:
        private_folder(folder, exist_ok=True)  # 0700, like the whole state directory
        with anyio.move_on_after(WAIT_TIMEOUT_S):
            # Polled: the slots are other processes' locks, which tell nobody when they go.
            # Taking one is a few non-blocking system calls, done on the loop.
            while (fd := _try_take(folder, count)) is None:  # noqa: ASYNC110
                await anyio.sleep(POLL_S * (1 + secrets.randbelow(100) / 100))
        if fd is None:
            raise EngineError(
                f"no sandbox start slot came free in {WAIT_TIMEOUT_S:.0f} s ({count} starts at "
                f"a time; {SLOTS_ENV} changes it)"
            )
    held = [fd] if fd is not None else []

    def release() -> None:
        while held:
            os.close(held.pop())  # closing the descriptor drops the lock

    try:
        yield release
    finally:
        release()
