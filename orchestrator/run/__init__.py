"""The public Python API: open one Expert's sandbox, use its skills over MCP, tear it down.

`open_run` (re-exported by the package) takes a config (a path or a parsed one), an expert key
and the secret values, and returns a `Run`: an async context manager with the run id and folder
and the MCP operations, whose teardown is shielded and always runs. The library prints nothing,
installs no signal or logging handler, and reports what happens in a run only to that run's
own sinks (its `tools.jsonl` and `skills.log`, plus the caller's `AuditSink`), so many runs can
share one process. Engine calls run in worker threads, never on the event loop.

The order is the contract: every input error (config, unknown expert, missing variable, bad
workspace, an Expert's folder the skills cannot read) is raised before any image is built or
any container exists.

```
_open.py      open_run and build_image: the ways in
_options.py   what open_run was asked for (RunOptions, ConfigSource); the backend a name picks
_prepare.py   the preparation before Docker: plan, secrets, workspace, lock, isolation, sealing
_preload.py   the MCP layer, imported in a thread of its own while the sandbox starts
_run.py       Run: its start (own sandbox or a pool's), its files, gateway, MCP operations, end
_sessions.py  the skills' sessions: an exec per stdio skill, a client per remote skill
```
"""

from __future__ import annotations

from perstack_sandbox.run._open import build_image, open_run
from perstack_sandbox.run._options import ConfigSource, sandbox_backend
from perstack_sandbox.run._preload import MCP_LAYER, import_mcp_layer, preload_mcp_layer
from perstack_sandbox.run._prepare import Prepared, check_workspace, prepare_run
from perstack_sandbox.run._run import Run
from perstack_sandbox.run._sessions import build_sessions, skill_home

__all__ = [
    "MCP_LAYER",
    "ConfigSource",
    "Prepared",
    "Run",
    "build_image",
    "build_sessions",
    "check_workspace",
    "import_mcp_layer",
    "open_run",
    "preload_mcp_layer",
    "prepare_run",
    "sandbox_backend",
    "skill_home",
]
