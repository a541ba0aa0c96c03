"""The audit stream: one JSON object per line on stdout, one line per decision and per close.

A line is built by ``json.dumps`` (which escapes every control character, so request bytes
can never start a line of their own) from fields whose lengths are capped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TextIO

# Long enough for any legal host (253) plus a port; anything longer is an attack, kept as a prefix.
MAX_FIELD_CHARS: Final = 300


def escape_raw(raw: bytes | str) -> str:
    """Return ``raw`` as printable text: bytes decoded with backslash escapes, length capped."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    escaped = text.encode("unicode_escape").decode("ascii")
    if len(escaped) > MAX_FIELD_CHARS:
        return escaped[:MAX_FIELD_CHARS] + "...(truncated)"
    return escaped


@dataclass
class Decision:
    """Everything known about one request when the proxy decides on it."""

    client: str
    method: str = ""
    raw_host: str = ""
    host: str | None = None
    port: int | None = None
    decision: str = "deny"
    reason: str = ""
    rule: str | None = None
    resolved: list[str] = field(default_factory=list)
    dialled: str | None = None
    # Set once the decision line is out, so that exactly those connections get a close line.
    written: bool = False


@dataclass
class AuditLog:
    """Writes audit lines to ``stream`` (stdout by default), flushed line by line."""

    sandbox_id: str
    stream: TextIO = field(default_factory=lambda: sys.stdout)

    def decision(self, conn: int, record: Decision) -> None:
        """Write the decision line of connection ``conn``."""
        record.written = True
        self._write(
            {
                "event": "decision",
                "conn": conn,
                "client": record.client,
                "method": escape_raw(record.method),
                "rawHost": escape_raw(record.raw_host),
                "host": record.host,
                "port": record.port,
                "decision": record.decision,
                "reason": record.reason,
                "rule": record.rule,
                "resolved": record.resolved,
                "dialled": record.dialled,
            }
        )

    def close(self, conn: int, client: str, up: int, down: int, started: float) -> None:
        """Write the close line of connection ``conn`` (``started`` from time.monotonic)."""
        self._write(
            {
                "event": "close",
                "conn": conn,
                "client": client,
                "bytesUp": up,
                "bytesDown": down,
                "durationMs": round((time.monotonic() - started) * 1000, 3),
            }
        )

    def _write(self, fields: dict[str, object]) -> None:
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "sandboxId": self.sandbox_id,
            **fields,
        }
        self.stream.write(json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n")
        self.stream.flush()
