"""The gateway's audit trail: every forwarded request, by shape, never by value.

Each record names the request kind, the skill, and what was asked for: a tool or prompt by
name with its argument SHAPE (keys and types), a resource by URI, an elicitation by the tool
whose call it belongs to. Records leave through `write_audit` only, to the run's own
`AuditSink` (tool calls as `ToolCall`, everything else as `Request`; both land in the run's
`tools.jsonl`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from perstack_sandbox.audit import TOOL_CALL_KIND, Request, ToolCall

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from perstack_sandbox.audit import AuditSink


def argument_shape(value: object) -> object:
    """Describe a JSON value by its shape only: keys and type names, never the values."""
    if isinstance(value, dict):
        return {str(key): argument_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes: list[object] = []
        for item in value:
            shape = argument_shape(item)
            if shape not in shapes:
                shapes.append(shape)
        return shapes
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "value")


def write_audit(sink: AuditSink, record: Mapping[str, Any]) -> None:
    """Write one audit record to the run's `sink` (the only way records leave the gateway).

    `record` holds time, kind, skill, durationMs, outcome and the request's shape fields.
    A plain tools/call (no task) is a `ToolCall`, so sinks that know only those still get it.
    """
    fields = dict(record)
    began = str(fields.pop("time", ""))
    kind = str(fields.pop("kind", TOOL_CALL_KIND))
    skill = str(fields.pop("skill", "?"))
    duration_ms = float(fields.pop("durationMs", 0.0))
    outcome = str(fields.pop("outcome", "error"))
    if kind == TOOL_CALL_KIND and set(fields) <= {"tool", "argShape"}:
        tool, shape = str(fields.get("tool", "?")), fields.get("argShape", {})
        sink.tool_call(ToolCall(began, skill, tool, shape, duration_ms, outcome))
        return
    sink.request(Request(began, kind, skill, fields, duration_ms, outcome))


@dataclass
class Entry:
    """One audit record being filled in while its request runs."""

    fields: dict[str, Any]
    outcome: str = "error"
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def audited(sink: AuditSink, kind: str, skill: str, **fields: object) -> Iterator[Entry]:
    """Time one forwarded request and write its record to `sink` when it ends.

    The outcome is "error" unless the body sets it; `fields` are the request's shape (tool,
    prompt, uri, argShape...).
    """
    began = datetime.now(UTC).isoformat(timespec="milliseconds")
    started = time.perf_counter()
    entry = Entry(fields)
    try:
        yield entry
    finally:
        record = {"time": began, "kind": kind, "skill": skill, **entry.fields, **entry.extra}
        record["durationMs"] = (time.perf_counter() - started) * 1000
        record["outcome"] = entry.outcome
        write_audit(sink, record)
