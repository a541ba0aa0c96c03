"""Writing a run's audit trail: one sink object per run, never a process-wide handler.

The gateway and each skill session report what happens in their run to that run's
`AuditSink`; `RunFiles` keeps it in the run folder (`tools.jsonl`, `skills.log`), `TeeSink`
adds the caller's own sink. Runs that share a process therefore keep separate trails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol, TextIO

from perstack_sandbox import state
from perstack_sandbox.audit._capped import SKILLS_LOG_CAP_BYTES, CappedFile, open_capped
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

TOOL_CALL_KIND: Final = "tools/call"  # also the kind of a `tools.jsonl` line without one (older)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One finished tools/call as the audit keeps it: names and argument shape, never values."""

    time: str  # when it began, ISO 8601 UTC with milliseconds
    skill: str
    tool: str  # the name the host client called (prefixed under --prefix-tools)
    arg_shape: object  # see `gateway.argument_shape`
    duration_ms: float
    outcome: str  # ok, isError, error, refused-egress-down

    def to_json(self) -> dict[str, object]:
        """Return the `tools.jsonl` line of this call (camelCase keys)."""
        return {
            "time": self.time,
            "kind": TOOL_CALL_KIND,
            "skill": self.skill,
            "tool": self.tool,
            "argShape": self.arg_shape,
            "durationMs": round(self.duration_ms, 1),
            "outcome": self.outcome,
        }

    def describe(self) -> str:
        """Return the call as one line of text for a log."""
        shape = json.dumps(self.arg_shape, sort_keys=True)
        return (
            f"tools/call {self.tool} (skill {self.skill}) args={shape} -> {self.outcome} "
            f"in {self.duration_ms:.1f} ms"
        )


@dataclass(frozen=True, slots=True)
class Request:
    """One forwarded request other than a plain tools/call, by shape, never by value.

    `kind` is its MCP method (resources/read, prompts/get, elicitation/create, ...); `target`
    holds what it was about: a resource's `uri`, a prompt's name and `argShape`, the `tool`
    whose call a skill's question belongs to, a `task` id.
    """

    time: str  # when it began, ISO 8601 UTC with milliseconds
    kind: str
    skill: str
    target: Mapping[str, object]
    duration_ms: float
    outcome: str  # ok, error, and for a question the client's action (accept, decline, ...)

    def to_json(self) -> dict[str, object]:
        """Return the `tools.jsonl` line of this request (camelCase keys)."""
        return {
            **self.target,
            "time": self.time,
            "kind": self.kind,
            "skill": self.skill,
            "durationMs": round(self.duration_ms, 1),
            "outcome": self.outcome,
        }

    def describe(self) -> str:
        """Return the request as one line of text for a log."""
        what = self.target.get("tool") or self.target.get("prompt") or self.target.get("uri")
        shape = self.target.get("argShape")
        args = f" args={json.dumps(shape, sort_keys=True)}" if shape is not None else ""
        return (
            f"{self.kind} {what or '-'} (skill {self.skill}){args} -> {self.outcome} "
            f"in {self.duration_ms:.1f} ms"
        )


class AuditSink(Protocol):
    """Where one run reports what happens in it; one object per run, called on its event loop.

    Every text argument may quote a skill: a sink that prints or stores it escapes it first
    (`RunFiles` does).
    """

    def tool_call(self, call: ToolCall) -> None:
        """Report a tools/call that finished (or was refused)."""

    def request(self, request: Request) -> None:
        """Report another forwarded request that finished (a resource read, a question...)."""

    def skill_stderr(self, skill: str, line: str) -> None:
        """Report a line a skill wrote to its stderr."""

    def warning(self, message: str) -> None:
        """Report what the user should see: a skill died, the sandbox lost its egress."""

    def info(self, message: str) -> None:
        """Report a diagnostic for the run's log."""


class _NullSink:
    """A sink that keeps nothing: the default of a gateway or skill built without a run."""

    def tool_call(self, call: ToolCall) -> None:
        """Drop the call."""

    def request(self, request: Request) -> None:
        """Drop the request."""

    def skill_stderr(self, skill: str, line: str) -> None:
        """Drop the line."""

    def warning(self, message: str) -> None:
        """Drop the warning."""

    def info(self, message: str) -> None:
        """Drop the message."""


NULL_SINK: Final[AuditSink] = _NullSink()


class TeeSink:
    """A sink that hands every report to each of `sinks`, in order."""

    def __init__(self, *sinks: AuditSink) -> None:
        """Fan out to `sinks`."""
        self.sinks = sinks

    def tool_call(self, call: ToolCall) -> None:
        """Report the call to every sink."""
        for sink in self.sinks:
            sink.tool_call(call)

    def request(self, request: Request) -> None:
        """Report the request to every sink."""
        for sink in self.sinks:
            sink.request(request)

    def skill_stderr(self, skill: str, line: str) -> None:
        """Report the line to every sink."""
        for sink in self.sinks:
            sink.skill_stderr(skill, line)

    def warning(self, message: str) -> None:
        """Report the warning to every sink."""
        for sink in self.sinks:
            sink.warning(message)

    def info(self, message: str) -> None:
        """Report the message to every sink."""
        for sink in self.sinks:
            sink.info(message)


class RunFiles:
    """The sink of a run folder: forwarded requests to `tools.jsonl`, all as text to `skills.log`.

    Lines are written and flushed one by one, so a run that crashed keeps its trail; every
    text line is escaped with `printable` (it may quote a skill). `skills.log` stops at
    `SKILLS_LOG_CAP_BYTES` with a marker line (a skill writes what it likes to its stderr).
    """

    def __init__(self, run: state.RunState) -> None:
        """Open the run's `tools.jsonl` and `skills.log` for appending, private (0600).

        Raises:
            OSError: a file cannot be opened (a link planted in its place gives ELOOP).

        """
        self._tools = _append_private(run.tools_path)
        try:
            path = run.skills_log_path
            self._log: CappedFile = open_capped(
                path, state.private_fd(path, append=True), SKILLS_LOG_CAP_BYTES
            )
        except OSError:
            self._tools.close()
            raise

    def tool_call(self, call: ToolCall) -> None:
        """Append the call to `tools.jsonl` and a line to `skills.log`."""
        if self._tools.closed:
            return
        self._tools.write(json.dumps(call.to_json(), sort_keys=True, separators=(",", ":")) + "\n")
        self._line("gateway", "INFO", call.describe())

    def request(self, request: Request) -> None:
        """Append the request to `tools.jsonl` and a line to `skills.log`."""
        if self._tools.closed:
            return
        line = json.dumps(request.to_json(), sort_keys=True, separators=(",", ":"))
        self._tools.write(line + "\n")
        self._line("gateway", "INFO", request.describe())

    def skill_stderr(self, skill: str, line: str) -> None:
        """Append the skill's stderr line to `skills.log`."""
        self._line("skill", "INFO", f"[{skill}] {line}")

    def warning(self, message: str) -> None:
        """Append the warning to `skills.log`."""
        self._line("run", "WARNING", message)

    def info(self, message: str) -> None:
        """Append the message to `skills.log`."""
        self._line("run", "INFO", message)

    def _line(self, source: str, level: str, message: str) -> None:
        if self._log.closed:  # a skill's last stderr bytes may arrive after the run closed
            return
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._log.write((printable(f"{stamp} {source} {level} {message}") + "\n").encode())

    def close(self) -> None:
        """Close both files (later reports are an error)."""
        self._tools.close()
        self._log.close()


def _append_private(path: Path) -> TextIO:
    """Open `path` for appending as a private state file, never through a link."""
    return os.fdopen(state.private_fd(path, append=True), "a", encoding="utf-8", buffering=1)
