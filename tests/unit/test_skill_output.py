"""A skill's output is held in bounded memory: long lines are cut, the stderr tail is capped."""

from __future__ import annotations

import functools
import sys

import anyio
import pytest
from test_gateway import DEADLINE_S, SKILL, RecordingSink

from perstack_sandbox.errors import SkillError
from perstack_sandbox.gateway import open_gateway
from perstack_sandbox.skills import SkillSession, SkillSpec, local_process
from perstack_sandbox.skills._lines import (
    STDERR_LINE_BYTES,
    STDERR_TAIL_CHARS,
    STDERR_TAIL_LINES,
    LineCutter,
    StderrTail,
    read_lines,
)

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024
CHUNK = 65536  # what a pipe read returns at most


class NulStream:
    """A byte stream of `total` NUL bytes (no newline) in pipe-sized chunks, then EOF."""

    def __init__(self, total: int, *, then: bytes = b"") -> None:
        """Send `total` NUL bytes, then `then`."""
        self.left, self.then = total, then

    async def receive(self) -> bytes:
        """Return the next chunk, or raise EndOfStream."""
        if self.left <= 0:
            if self.then:
                chunk, self.then = self.then, b""
                return chunk
            raise anyio.EndOfStream
        size = min(CHUNK, self.left)
        self.left -= size
        return b"\0" * size


async def collect(stream: NulStream, **options: object) -> tuple[list[bytes], list[str]]:
    """Read every line of `stream` with `read_lines(**options)`; return lines and warnings."""
    warnings: list[str] = []
    lines = [line async for line in read_lines(stream, warn=warnings.append, **options)]  # type: ignore[arg-type]
    return lines, warnings


def test_the_cutter_keeps_the_head_of_a_line_and_counts_the_rest():
    """Bytes beyond the limit are counted, never kept, across any number of chunks."""
    cutter = LineCutter(4)
    assert cutter.feed(b"ab") == []
    assert cutter.feed(b"cdef") == []
    assert cutter.feed(b"gh\nxy\nz") == [(b"abcd", 4), (b"xy", 0)]
    assert cutter.end() == (b"z", 0)
    assert cutter.end() is None


def test_the_cutter_holds_at_most_its_limit_while_a_line_grows():
    """Feeding 64 MiB without a newline leaves the cutter holding `limit` bytes."""
    cutter = LineCutter(STDERR_LINE_BYTES)
    for _ in range(64 * MIB // CHUNK):
        cutter.feed(b"\0" * CHUNK)
    assert cutter.end() == (b"\0" * STDERR_LINE_BYTES, 64 * MIB - STDERR_LINE_BYTES)


async def test_a_huge_stderr_line_is_cut_to_its_head_with_a_marker():
    """A 16 MiB NUL line read as stderr yields its first 4 KiB and says how much was cut."""
    lines, warnings = await collect(
        NulStream(16 * MIB, then=b"\nnext\n"), limit=STDERR_LINE_BYTES, keep_head=True
    )
    cut = 16 * MIB - STDERR_LINE_BYTES
    assert lines == [b"\0" * STDERR_LINE_BYTES + f" [... {cut} more bytes cut]".encode(), b"next"]
    assert warnings == []


async def test_an_over_long_stdout_line_is_dropped_whole_and_the_next_line_kept():
    """Over the JSON-RPC limit, the whole line goes (no fragment of it), with a warning."""
    lines, warnings = await collect(NulStream(3 * MIB, then=b"\n{}\n"), limit=MIB)
    assert lines == [b"{}"]
    assert warnings == [f"dropping an over-long line ({3 * MIB} bytes)"]


def test_the_stderr_tail_keeps_the_last_lines_within_its_character_budget():
    """Twenty short lines are kept; long lines evict the oldest until the budget holds.

    Fails when (checked by hand): the tail evicts by line count only, as before.
    """
    tail = StderrTail()
    for number in range(30):
        tail.append(f"line {number}")
    assert tail.lines() == [f"line {number}" for number in range(10, 30)]
    for _ in range(5):
        tail.append("\\x00" * STDERR_LINE_BYTES)  # one cut stderr line, escaped: 16 KiB
    (kept,) = tail.lines()
    assert len(kept) <= STDERR_TAIL_CHARS
    assert kept.endswith(" more characters cut]")
    tail.append("last")
    assert sum(map(len, tail.lines())) <= STDERR_TAIL_CHARS
    assert tail.lines()[-1] == "last"
    assert len(tail.lines()) <= STDERR_TAIL_LINES


async def test_a_skill_dying_after_a_huge_stderr_line_reports_a_bounded_message():
    """A 2 MiB stderr line reaches the audit cut to 4 KiB and the error within the tail budget.

    Fails when (checked by hand): the session reads stderr without `limit` and `keep_head`
    (the whole line reaches the audit), or the tail is bounded by line count only.
    """
    audit = RecordingSink()
    factory = functools.partial(local_process, [sys.executable, str(SKILL)], env={})
    with anyio.fail_after(DEADLINE_S):
        async with open_gateway([SkillSession(SkillSpec("a"), factory, audit=audit)]) as gateway:
            with pytest.raises(SkillError) as died:
                await gateway.call_tool("crash", {"message": "\0" * (2 * MIB)})
    assert str(died.value).endswith("more characters cut]")
    assert len(str(died.value)) < STDERR_TAIL_CHARS + 100
    (line,) = [line for _skill, line in audit.stderr if "more bytes cut" in line]
    assert line.endswith(f" [... {2 * MIB - STDERR_LINE_BYTES} more bytes cut]")
    assert len(line) < 4 * STDERR_LINE_BYTES + 100
