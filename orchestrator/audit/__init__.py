"""The audit trail of a run: how it is written (per-run sinks) and read back (`audit`).

A run reports what happens in it through one `AuditSink` object of its own, never through
process-wide logging handlers, so runs that share a process keep separate trails. `RunFiles`
is the sink of a run folder (see `perstack_sandbox.state`); `TeeSink` adds the caller's own.

```
_capped.py   append-only run files with a size cap (skills.log, the proxy's audit and log)
_sinks.py    AuditSink, ToolCall, Request, RunFiles, TeeSink, NULL_SINK
_summary.py  reading audit.jsonl and tools.jsonl back into a summary, for `audit`
```
"""

from __future__ import annotations

from perstack_sandbox.audit._capped import (
    PROXY_AUDIT_CAP_BYTES,
    PROXY_LOG_CAP_BYTES,
    SKILLS_LOG_CAP_BYTES,
    CappedFile,
    open_capped,
)
from perstack_sandbox.audit._sinks import (
    NULL_SINK,
    TOOL_CALL_KIND,
    AuditSink,
    Request,
    RunFiles,
    TeeSink,
    ToolCall,
)
from perstack_sandbox.audit._summary import (
    HostSummary,
    RequestSummary,
    RunSummary,
    ToolSummary,
    find_run,
    read_jsonl,
    render_text,
    summarise,
    summarise_run,
    tool_counts,
)

__all__ = [
    "NULL_SINK",
    "PROXY_AUDIT_CAP_BYTES",
    "PROXY_LOG_CAP_BYTES",
    "SKILLS_LOG_CAP_BYTES",
    "TOOL_CALL_KIND",
    "AuditSink",
    "CappedFile",
    "HostSummary",
    "Request",
    "RequestSummary",
    "RunFiles",
    "RunSummary",
    "TeeSink",
    "ToolCall",
    "ToolSummary",
    "find_run",
    "open_capped",
    "read_jsonl",
    "render_text",
    "summarise",
    "summarise_run",
    "tool_counts",
]
