"""The service's Prometheus metrics, on a registry of its own (never the process-global one).

Tool calls reach `ToolMetrics`, an `AuditSink` each run gets beside its own files; proxy
decisions are read from each live run's `audit.jsonl` when `/metrics` is scraped (the proxy
writes them there, and the file is the one record of them), so nothing polls in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from perstack_sandbox.audit import Request, ToolCall

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
RUN_STATES: Final = ("starting", "running", "stopping")
START_BUCKETS: Final = (0.5, 1, 1.5, 2, 3, 5, 10, 20, 60, 300)  # seconds: a warm claim to a build
CALL_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        """Make the metrics on a registry of their own."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Gauge(
            "perstack_sandbox_runs",
            "Runs held by the service, by state.",
            ["state"],
            registry=self.registry,
        )
        for run_state in RUN_STATES:
            self.runs.labels(run_state).set(0)
        self.pool_size = Gauge(
            "perstack_sandbox_pool_size",
            "Warm sandboxes ready to be claimed, by Expert.",
            ["expert"],
            registry=self.registry,
        )
        self.run_start = Histogram(
            "perstack_sandbox_run_start_seconds",
            "From POST /v1/runs to the skills answering.",
            ["pooled"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "perstack_sandbox_tool_calls",
            "Tool calls, by skill and outcome.",
            ["skill", "outcome"],
            registry=self.registry,
        )
        self.tool_latency = Histogram(
            "perstack_sandbox_tool_call_seconds",
            "Tool call latency, by skill.",
            ["skill"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "perstack_sandbox_proxy_decisions",
            "Egress proxy decisions, by decision and reason.",
            ["decision", "reason"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """Return the metrics in Prometheus text format."""
        return generate_latest(self.registry)


@dataclass(slots=True)
class DecisionTail:
    """Where the last scrape stopped reading one run's `audit.jsonl`."""

    path: Path
    offset: int = 0
    partial: bytes = field(default=b"")

    def count_new(self, metrics: Metrics) -> None:
        """Count the decision lines written since the last call (whole lines only)."""
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except OSError:
            return
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            _count_decision(metrics, line)


def _count_decision(metrics: Metrics, line: bytes) -> None:
    try:
        record = json.loads(line)
    except ValueError:
        return
    if not isinstance(record, dict) or record.get("event") != "decision":
        return
    decision = str(record.get("decision") or "unknown")
    reason = str(record.get("reason") or ("allowed" if decision == "allow" else "unknown"))
    metrics.decisions.labels(decision, reason).inc()


class ToolMetrics:
    """An `AuditSink` that counts a run's tool calls and their latency by skill."""

    def __init__(self, metrics: Metrics, on_activity: Callable[[], None]) -> None:
        """Count into `metrics`; tell `on_activity` of every call (the idle timeout)."""
        self._metrics, self._on_activity = metrics, on_activity

    def tool_call(self, call: ToolCall) -> None:
        """Count one finished call."""
        self._metrics.tool_calls.labels(call.skill, call.outcome).inc()
        self._metrics.tool_latency.labels(call.skill).observe(call.duration_ms / 1000)
        self._on_activity()

    def request(self, request: Request) -> None:
        """Other requests are activity too, not tool calls."""
        del request
        self._on_activity()

    def skill_stderr(self, skill: str, line: str) -> None:
        """Stderr stays in the run's files."""

    def warning(self, message: str) -> None:
        """Warnings stay in the run's files."""

    def info(self, message: str) -> None:
        """Diagnostics stay in the run's files."""
