"""The gateway: one MCP server that exposes every skill's tools to the host client.

Tools keep their original names (after pick/omit); a name offered by two skills is a startup
error unless `--prefix-tools` exposes `skill__tool` everywhere. Interactive tools ask the host
client's user through MCP elicitation (form mode; on 2026-07-28 connections as an
`InputRequiredResult`), a terminal prompt from `call`, or else answer that input is needed.
Tool calls are logged by name and argument shape only, never values.

```
_core.py        Gateway: routes (pick/omit, collisions, prefixes), calls, interactive tools, log
_server.py      the low-level MCP server over a Gateway, with elicitation (both protocol eras)
_transports.py  stdio, and streamable HTTP on 127.0.0.1 behind a bearer token and Origin check
```
"""

from __future__ import annotations

from orchestrator.gateway._audit import argument_shape, write_audit
from orchestrator.gateway._catalog import Route, build_routes, exposed_name, exposed_uri, split_uri
from orchestrator.gateway._core import (
    Gateway,
    Prompter,
    input_needed,
    open_gateway,
    question_for,
    result_payload,
    sole_exception,
    tools_payload,
)
from orchestrator.gateway._server import make_server
from orchestrator.gateway._transports import (
    parse_listen,
    serve_http,
    serve_stdio,
    terminal_prompter,
)

__all__ = [
    "Gateway",
    "Prompter",
    "Route",
    "argument_shape",
    "build_routes",
    "exposed_name",
    "exposed_uri",
    "input_needed",
    "make_server",
    "open_gateway",
    "parse_listen",
    "question_for",
    "result_payload",
    "serve_http",
    "serve_stdio",
    "sole_exception",
    "split_uri",
    "terminal_prompter",
    "tools_payload",
    "write_audit",
]
