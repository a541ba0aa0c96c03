"""The audit stream: one JSON object per line on stdout, one line per decision and per close.

A line is JSON whose strings are encoded by the json module's own ASCII encoder (which
escapes every control character, so request bytes can never start a line of their own), from
fields whose lengths are capped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _string
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    import asyncio

# Long enough for any legal host (253) plus a port; anything longer is an attack, kept as a prefix.
MAX_FIELD_CHARS: Final = 300


def escape_raw(raw: bytes | str) -> str:
    """Return ``raw`` as printable text: bytes decoded with backslash escapes, length capped."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if len(text) <= MAX_FIELD_CHARS and text.isascii() and text.isprintable() and "\\" not in text:
        return text  # what unicode_escape would return (the usual case: a clean host or method)
    escaped = text.encode("unicode_escape").decode("ascii")
    if len(escaped) > MAX_FIELD_CHARS:
        return escaped[:MAX_FIELD_CHARS] + "...(truncated)"
    return escaped


class _Clock:
    """The time of a line as ``datetime.isoformat(timespec="milliseconds")`` writes it in UTC.

    The date and time up to the second are formatted once per second, not once per line: a
    burst of tunnels writes many lines within one second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            stamp = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
            self._prefix = stamp.removesuffix("+00:00")
        millis = int((now - second) * 1000)
        return f"{self._prefix}.{millis:03d}+00:00"


@dataclass
class Decision:
    """Everything known about one request when the proxy decides on it."""

    client: str
    # The skill whose credential the request carried (its name; the token is never kept).
    skill: str | None = None
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
    """Writes audit lines to ``stream`` (stdout by default), flushed line by line.

    A line is exactly what ``json.dumps(..., ensure_ascii=True, separators=(",", ":"))`` makes
    of its fields, assembled from per-field encodings (the same string encoder json uses) so
    that the fixed parts are not re-encoded for every line.
    """

    sandbox_id: str
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    # Set by `flush_once_per_iteration`: lines written in one loop iteration share one flush.
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _flush_scheduled: bool = field(default=False, init=False, repr=False)
    _clock: _Clock = field(default_factory=_Clock, init=False, repr=False)
    _sandbox: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        """Encode the one field every line repeats once, not per line."""
        self._sandbox = f'"sandboxId":{_string(self.sandbox_id)},'

    def flush_once_per_iteration(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush at the end of each iteration of ``loop`` instead of after every line.

        Lines stay whole and in order; a burst of connections costs one write, not one each.
        """
        self._loop = loop

    def decision(self, conn: int, record: Decision) -> None:
        """Write the decision line of connection ``conn``."""
        record.written = True
        port = "null" if record.port is None else int(record.port)
        resolved = ",".join(map(_string, record.resolved))
        self._write(
            f'"event":"decision","conn":{int(conn)},"client":{_string(record.client)},'
            f'"skill":{_optional(escape_raw(record.skill) if record.skill else None)},'
            f'"method":{_string(escape_raw(record.method))},'
            f'"rawHost":{_string(escape_raw(record.raw_host))},"host":{_optional(record.host)},'
            f'"port":{port},"decision":{_string(record.decision)},'
            f'"reason":{_string(record.reason)},"rule":{_optional(record.rule)},'
            f'"resolved":[{resolved}],"dialled":{_optional(record.dialled)}'
        )

    def close(self, conn: int, client: str, up: int, down: int, started: float) -> None:
        """Write the close line of connection ``conn`` (``started`` from time.monotonic)."""
        duration = round((time.monotonic() - started) * 1000, 3)
        self._write(
            f'"event":"close","conn":{int(conn)},"client":{_string(client)},'
            f'"bytesUp":{int(up)},"bytesDown":{int(down)},"durationMs":{float(duration)!r}'
        )

    def sealed(  # noqa: PLR0913 - one optional field per kind of sealed line
        self,
        conn: int,
        skill: str,
        host: str,
        *,
        reason: str | None = None,
        variables: list[str] | None = None,
        owner: str | None = None,
    ) -> None:
        """Write a line of a sealed tunnel: a substitution (variable names) or a refusal.

        Names only: a value never reaches this method (docs/architecture.md, decision 37).
        """
        names = ",".join(_string(escape_raw(name)) for name in variables or [])
        self._write(
            f'"event":"sealed","conn":{int(conn)},"skill":{_string(escape_raw(skill))},'
            f'"host":{_string(host)},"decision":{_string("deny" if reason else "substitute")},'
            f'"reason":{_optional(reason)},"variables":[{names}],'
            f'"placeholderOf":{_optional(escape_raw(owner) if owner else None)}'
        )

    def _write(self, fields: str) -> None:
        self.stream.write(f'{{"time":"{self._clock.now()}",{self._sandbox}{fields}}}\n')
        if self._loop is None or self._loop.is_closed():
            self.stream.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write out every line written so far."""
        self._flush_scheduled = False
        self.stream.flush()


def _optional(value: str | None) -> str:
    return "null" if value is None else _string(value)
