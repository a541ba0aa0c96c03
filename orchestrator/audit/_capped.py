"""Append-only run files with a size cap: what a sandbox makes the host write is bounded.

A hostile skill controls its stderr (copied to `skills.log`) and how many requests it sends
the proxy (each one a line of `audit.jsonl`, copied to the host). Each such file stops at
its cap: the last whole line that fits is kept, then one marker line says the file was cut,
and later writes are dropped (counted, not kept). The head is kept rather than rotated: the
first lines of a run say how it began, which a flood that follows would otherwise push out,
and every reader (`audit`, `/metrics`, a person) reads one file. See docs/architecture.md,
decision 76.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    from pathlib import Path

MIB: Final = 1024 * 1024
SKILLS_LOG_CAP_BYTES: Final = 16 * MIB  # about 100,000 lines of a chatty skill
PROXY_AUDIT_CAP_BYTES: Final = 64 * MIB  # about 200,000 of the proxy's decisions
PROXY_LOG_CAP_BYTES: Final = 16 * MIB  # the proxy's own diagnostics


def text_marker(name: str, cap: int) -> bytes:
    """Return the marker line of a text log cut at `cap` bytes."""
    return f"[{name} reached its cap of {cap} bytes; later lines are not kept]\n".encode()


def record_marker(name: str, cap: int) -> bytes:
    """Return the marker line of a JSON-lines file cut at `cap` bytes (itself a record)."""
    record = {"event": "truncated", "file": name, "capBytes": cap}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class CappedFile:
    """An unbuffered append-only file that stops at `cap` bytes, ending with `marker`."""

    def __init__(self, fd: int, *, cap: int, marker: bytes) -> None:
        """Take over `fd` (opened for appending); what it already holds counts."""
        self._file = os.fdopen(fd, "ab", buffering=0)
        self.cap, self.marker = cap, marker
        self.written = os.fstat(fd).st_size
        self.dropped = 0  # bytes refused after the cap
        self.is_full = self.written >= cap
        self._at_line_start = True

    @property
    def closed(self) -> bool:
        """Tell whether the file was closed."""
        return self._file.closed

    def write(self, data: bytes) -> None:
        """Append `data`, or its whole lines that fit and the marker, or nothing once full."""
        if self.is_full:
            self.dropped += len(data)
            return
        if self.written + len(data) <= self.cap:
            self._append(data)
            return
        fits = data[: self.cap - self.written]
        kept = fits[: fits.rfind(b"\n") + 1]
        self._append(kept if self._at_line_start or kept else b"\n")
        self._append(self.marker)
        self.dropped += len(data) - len(kept)
        self.is_full = True

    def _append(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self.written += len(data)
            self._at_line_start = data.endswith(b"\n")

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> Self:
        """Return the file itself."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close the file."""
        self.close()


def open_capped(path: Path, fd: int, cap: int) -> CappedFile:
    """Return `fd` (opened on `path` for appending) capped at `cap`, marked by its kind.

    A `.jsonl` file ends with a JSON record, any other with a line of text.
    """
    marker = record_marker if path.suffix == ".jsonl" else text_marker
    return CappedFile(fd, cap=cap, marker=marker(path.name, cap))
