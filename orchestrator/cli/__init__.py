"""The `perstack-sandbox` command line (its contract: README.md, "Using it").

Commands stay synchronous; those that start a sandbox go through `launch` (the CLI's layer
over the public API), which adds env files, stderr progress and signal handling. `main` maps
every error to an exit code from one table and is the only place that exits the process.

```
_app.py       the application, shared options, the exit-code table, main, error lines
_help.py      plain --help: examples, metavars, the exit-code table (generic per parameter)
_commands.py  validate, plan, schema, build, tools, call, run
_ops.py       ps, down, gc, doctor, audit, client setup, client list
_serve.py     serve, and --server for tools, call and run
_render.py    render kubernetes: the Kubernetes backend's manifests as YAML
_clients.py   the MCP client configuration files `client setup` merges an Expert into
```
"""

from __future__ import annotations

# Importing the command modules registers their commands on `app`.
from perstack_sandbox.cli import _commands, _ops, _render, _serve  # noqa: F401
from perstack_sandbox.cli._app import (
    EXIT_CODE_TABLE,
    EXIT_CODES,
    INTERRUPTED,
    PROGRAM,
    app,
    error_lines,
    exit_code_for,
    main,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_CODE_TABLE",
    "INTERRUPTED",
    "PROGRAM",
    "app",
    "error_lines",
    "exit_code_for",
    "main",
]
