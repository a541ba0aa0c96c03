"""`perstack-sandbox serve`: one long-lived process that holds many runs for agent runtimes.

A runtime that cannot embed the Python library (the production one is TypeScript) asks the
service for a run over a small JSON API and talks MCP to that run's own endpoint. The service
sits on the public API (`open_run`/`Run`) and the gateway's streamable-HTTP server; it adds
addresses and tokens, lifetimes, metrics, retention and draining (docs/architecture.md,
decisions 30-32).

```
_address.py  unix:PATH or HOST:PORT; loopback unless --allow-remote
_api.py      the request body (CreateRun), errors as answers with the CLI's lines
_runs.py     the runs held: each one a task holding its Run and its mounted MCP endpoint
_app.py      the HTTP routes, the service token, each run's token on its endpoint
_metrics.py  Prometheus metrics; tool calls as an AuditSink, proxy decisions from audit.jsonl
_pools.py    warm pools: where the pool engine connects
_server.py   binding, the start-up sweep, periodic pruning, SIGTERM draining
_client.py   `tools`, `call`, `run` with --server
```
"""

from __future__ import annotations

from perstack_sandbox.service._address import Address, default_address, parse_address
from perstack_sandbox.service._api import CreateRun, parse_create
from perstack_sandbox.service._client import bridge_via, call_via, tools_via
from perstack_sandbox.service._pools import PoolSpec, parse_pool
from perstack_sandbox.service._server import ServeOptions, serve, stderr_line

__all__ = [
    "Address",
    "CreateRun",
    "PoolSpec",
    "ServeOptions",
    "bridge_via",
    "call_via",
    "default_address",
    "parse_address",
    "parse_create",
    "parse_pool",
    "serve",
    "stderr_line",
    "tools_via",
]
