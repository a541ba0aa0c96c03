"""One MCP client session per skill, over a process's stdio byte streams.

The core is independent of Docker: a `ProcessFactory` opens something with `stdin`, `stdout`
and `stderr` byte streams (a `docker exec` attached through the engine, or a local subprocess in
tests), and `SkillSession` speaks MCP over it with the SDK's `ClientSession`.

Lifecycle of one skill:
- it starts with the sandbox unless `lazy_init`, in which case it starts on first use;
- stdout carries newline-delimited JSON-RPC; stderr goes to the run's log, and its last lines
  are kept for error messages;
- if it dies, the call in flight fails with its exit code and last stderr lines, and the NEXT
  call restarts it, once; a second death is final;
- every request carries the config's `timeout`.

```
_process.py  SkillProcess protocol, local subprocesses (tests, benchmarks), stdio pumps
_session.py  SkillSession: MCP client session, lifecycle, restart, timeouts, stderr tail
_remote.py   RemoteSkillSession: mcpSseSkill over SSE or streamable HTTP through the proxy
```
"""

from __future__ import annotations

from perstack_sandbox.skills._process import ProcessFactory, SkillProcess, local_process
from perstack_sandbox.skills._remote import RemoteSkillSession
from perstack_sandbox.skills._session import SkillSession, SkillSpec, filter_tools

__all__ = [
    "ProcessFactory",
    "RemoteSkillSession",
    "SkillProcess",
    "SkillSession",
    "SkillSpec",
    "filter_tools",
    "local_process",
]
