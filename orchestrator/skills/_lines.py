"""Lines of a skill's output, held in bounded memory whatever the skill writes.

A skill is untrusted code, and its stdout and stderr reach the host process. `read_lines`
keeps at most `limit` bytes of any one line and scans every byte once (a long line is never
searched again from its start), so one 16 MiB line without a newline costs 16 MiB of reading,
not 16 MiB of memory times the number of chunks. What it does with the rest of an over-long
line is the caller's choice: stdout (JSON-RPC) drops the whole line, a half message being
useless; stderr keeps the head with a marker, the head being what a person reads.
`StderrTail` keeps the last lines of stderr for an error message, bounded in characters
(`printable` escapes a control byte as four characters). See docs/architecture.md, decision 76.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

MAX_LINE_BYTES: Final = 64 * 1024 * 1024  # one JSON-RPC message; beyond this the skill is broken
STDERR_LINE_BYTES: Final = 4096  # a log line a person reads; a stack frame fits many times
STDERR_TAIL_LINES: Final = 20  # the last stderr lines quoted when a skill fails
STDERR_TAIL_CHARS: Final = 8192  # and at most this many characters of them (escaped text)
TAIL_MARKER_ROOM: Final = 48  # room for the marker of a line cut to fit the tail


def cut_marker(cut: int) -> bytes:
    """Return what replaces the `cut` bytes dropped from the end of an over-long line."""
    return f" [... {cut} more bytes cut]".encode()


class LineCutter:
    """Splits bytes into lines, keeping at most `limit` bytes of each (pure, no I/O)."""

    def __init__(self, limit: int) -> None:
        """Keep at most `limit` bytes of a line; count the rest as cut."""
        self.limit = limit
        self._head = bytearray()
        self._cut = 0  # bytes of the current line beyond `limit`, dropped as they came

    def feed(self, chunk: bytes) -> list[tuple[bytes, int]]:
        """Return the lines `chunk` completes, each as (kept bytes, count of bytes cut)."""
        done = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._add(chunk[start:end])
            done.append(self._take())
            start = end + 1
        self._add(chunk[start:])
        return done

    def end(self) -> tuple[bytes, int] | None:
        """Return the partial line left at the end of the stream, if any."""
        return self._take() if self._head or self._cut else None

    def _add(self, piece: bytes) -> None:
        room = self.limit - len(self._head)
        self._head += piece[: max(room, 0)]
        self._cut += max(len(piece) - room, 0)

    def _take(self) -> tuple[bytes, int]:
        line = (bytes(self._head), self._cut)
        self._head.clear()
        self._cut = 0
        return line


async def read_lines(
    stream: anyio.abc.ByteReceiveStream,
    *,
    warn: Callable[[str], None],
    limit: int = MAX_LINE_BYTES,
    keep_head: bool = False,
) -> AsyncIterator[bytes]:
    """Yield complete lines (without the newline); a trailing partial line is yielded at EOF.

    A line longer than `limit` bytes is dropped and `warn` is told; with `keep_head`, its first
    `limit` bytes are yielded instead, followed by `cut_marker`. Memory stays within `limit`
    plus one chunk.
    """
    cutter = LineCutter(limit)
    with contextlib.suppress(
        anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError
    ):
        while True:
            for head, cut in cutter.feed(await stream.receive()):
                if (line := _finished(head, cut, warn=warn, keep_head=keep_head)) is not None:
                    yield line
    last = cutter.end()
    if last is not None and (line := _finished(*last, warn=warn, keep_head=keep_head)) is not None:
        yield line


def _finished(
    head: bytes, cut: int, *, warn: Callable[[str], None], keep_head: bool
) -> bytes | None:
    if not cut:
        return head
    if keep_head:
        return head + cut_marker(cut)
    warn(f"dropping an over-long line ({len(head) + cut} bytes)")
    return None


class StderrTail:
    """The last stderr lines of a skill, at most `STDERR_TAIL_LINES` and `STDERR_TAIL_CHARS`."""

    def __init__(self) -> None:
        """Start empty."""
        self._lines: deque[str] = deque()
        self._chars = 0

    def append(self, line: str) -> None:
        """Keep `line` (its head, if it alone is over budget), dropping the oldest as needed."""
        if len(line) > STDERR_TAIL_CHARS:
            kept = STDERR_TAIL_CHARS - TAIL_MARKER_ROOM
            line = f"{line[:kept]} [... {len(line) - kept} more characters cut]"
        self._lines.append(line)
        self._chars += len(line)
        while len(self._lines) > STDERR_TAIL_LINES or self._chars > STDERR_TAIL_CHARS:
            self._chars -= len(self._lines.popleft())

    def clear(self) -> None:
        """Forget every line (a restart)."""
        self._lines.clear()
        self._chars = 0

    def lines(self) -> list[str]:
        """Return the kept lines, oldest first."""
        return list(self._lines)
