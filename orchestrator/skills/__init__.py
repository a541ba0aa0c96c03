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
- every request carries the config's `timeout`;
- the skill is told the client capabilities its `SkillBridge` declares (the gateway's host
  clients' ones), and its requests to the client (elicitation, sampling, roots) and its
  notifications go to that bridge. When the declared capabilities change, the skill is
  restarted with them at its next use while idle (a server decides at its handshake which
  tools it offers); such a restart does not count as its one restart after a crash.

```
_process.py  SkillProcess protocol, local subprocesses (tests, benchmarks), stdio pumps
_client.py   the MCP client side: handshake with declared capabilities, catalog, the bridge
_spec.py     SkillSpec: name, pick/omit, lazyInit, timeout
_pin.py      ToolPin: a listing must match the lock's pinned tool definitions
_session.py  SkillSession: lifecycle, restart, requests with timeouts, stderr tail
_remote.py   RemoteSkillSession: mcpSseSkill over SSE or streamable HTTP through the proxy
```
"""

from __future__ import annotations

from perstack_sandbox.skills._client import (
    NoBridge,
    SkillAnswer,
    SkillBridge,
    SkillCatalog,
    SkillRequest,
)
from perstack_sandbox.skills._pin import ToolPin, pinned_tools
from perstack_sandbox.skills._process import ProcessFactory, SkillProcess, first_of, local_process
from perstack_sandbox.skills._remote import RemoteSkillSession
from perstack_sandbox.skills._session import SkillSession
from perstack_sandbox.skills._spec import SkillSpec, filter_tools

__all__ = [
    "NoBridge",
    "ProcessFactory",
    "RemoteSkillSession",
    "SkillAnswer",
    "SkillBridge",
    "SkillCatalog",
    "SkillProcess",
    "SkillRequest",
    "SkillSession",
    "SkillSpec",
    "ToolPin",
    "filter_tools",
    "first_of",
    "local_process",
    "pinned_tools",
]
