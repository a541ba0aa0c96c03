"""The gateway's audit trail: every forwarded request, by shape, never by value.

Each record names the request kind, the skill, and what was asked for: a tool or prompt by
name with its argument SHAPE (keys and types), a resource by URI, an elicitation by the tool
whose call it belongs to. Records leave through `write_audit` only, so the sink can change (a
per-run sink instead of the logging handler) in one place.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.audit import TOOL_CALL_FIELD, TOOL_CALL_KIND

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

logger = logging.getLogger("orchestrator.gateway")


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


def write_audit(record: Mapping[str, Any]) -> None:
    """Write one audit record (the only way records leave the gateway)."""
    target = record.get("tool") or record.get("prompt") or record.get("uri") or ""
    shape = record.get("argShape")
    args = f" args={json.dumps(shape, sort_keys=True)}" if shape is not None else ""
    logger.info(
        "%s %s (skill %s)%s -> %s in %.1f ms",
        record.get("kind", TOOL_CALL_KIND),
        target,
        record.get("skill"),
        args,
        record.get("outcome"),
        record.get("durationMs", 0.0),
        extra={TOOL_CALL_FIELD: dict(record)},
    )


@dataclass
class Entry:
    """One audit record being filled in while its request runs."""

    fields: dict[str, Any]
    outcome: str = "error"
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def audited(kind: str, skill: str, **fields: object) -> Iterator[Entry]:
    """Time one forwarded request and write its record when it ends (outcome "error" unless set).

    `fields` are the request's shape (tool, prompt, uri, argShape...).
    """
    began = datetime.now(UTC).isoformat(timespec="milliseconds")
    started = time.perf_counter()
    entry = Entry(fields)
    try:
        yield entry
    finally:
        record = {"time": began, "kind": kind, "skill": skill, **entry.fields, **entry.extra}
        record["durationMs"] = round((time.perf_counter() - started) * 1000, 1)
        record["outcome"] = entry.outcome
        write_audit(record)
