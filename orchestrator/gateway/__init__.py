"""The gateway: one MCP server that exposes everything the Expert's skills offer.

Tools, resources and templates, prompts, completion, logging, progress, cancellation,
elicitation, sampling, roots, tasks and list changes pass through, in both protocol eras the SDK
speaks (2025-11-25 with its handshake and sessions, 2026-07-28 stateless), over stdio and
streamable HTTP.

- **Names.** Tool and prompt names, resource URIs and templates keep their skill's spelling
  (after pick/omit, which also filter prompts by name and resources by name or URI); the same
  name from two skills is a startup error naming both, unless `--prefix-tools` gives each skill
  its own namespace: `skill__name` for tools and prompts, `perstack-skill://<skill>/<uri>` for
  resource URIs and templates, rewritten in results too (see `_catalog`).
- **Capabilities.** Each skill is told exactly the elicitation, sampling and roots capabilities
  the host clients declared (restarted with them, while idle, when they change), and its
  questions reach the client whose call it is serving; with no client able to answer, the skill
  gets a clear refusal (see `_hosts`). 2026-07-28 clients get them as `InputRequiredResult`
  (see `_pending`). Interactive tools ask through elicitation, a terminal prompt from `call`,
  or else answer that input is needed.
- **Audit.** Every forwarded request goes to the run's `AuditSink` by shape, never values:
  tool calls and prompt gets by name and argument shape, resource reads by URI, questions by
  the tool they belong to (see `_audit`).
- **End.** When the run's sandbox goes (`ends_when`), later tool calls are refused with the
  reason and every client that has sent a request gets it as an `error` log message.

```
_core.py        Gateway: skills, catalog refresh, tool calls, interactive tools; the skills' bridge
_catalog.py     names, URIs and templates across skills: collisions, prefixes, routing
_requests.py    forwarding resources, prompts, completion, logging, subscriptions and tasks
_hosts.py       host clients: declared capabilities, skill questions and notifications upward
_pending.py     2026-07-28: a skill's questions as InputRequiredResult, answered on the retry
_results.py     interactive tools' questions, text results, results as JSON
_audit.py       the audit records and the one function that writes them
_server.py      the low-level MCP server over a Gateway (both eras)
_plain_json.py  streamable HTTP: a plain JSON answer when no stream is needed
_transports.py  stdio, and streamable HTTP on 127.0.0.1 behind a bearer token and Origin check
_guard.py       that bearer-token and Origin check, as ASGI middleware
_mount.py       a gateway's endpoint as an ASGI app that `serve` mounts under a run's path
```
"""

from __future__ import annotations

# Lives in errors: the layers below the gateway use it without importing the MCP SDK.
from perstack_sandbox.errors import sole_exception
from perstack_sandbox.gateway._audit import argument_shape, write_audit
from perstack_sandbox.gateway._catalog import (
    Route,
    build_routes,
    exposed_name,
    exposed_uri,
    split_uri,
)
from perstack_sandbox.gateway._core import (
    EgressCheck,
    EndWatch,
    Gateway,
    Prompter,
    open_gateway,
)
from perstack_sandbox.gateway._guard import new_token
from perstack_sandbox.gateway._mount import mounted_endpoint
from perstack_sandbox.gateway._requests import get_prompt, read_resource
from perstack_sandbox.gateway._results import (
    input_needed,
    question_for,
    result_payload,
    text_result,
    tools_payload,
)
from perstack_sandbox.gateway._server import make_server
from perstack_sandbox.gateway._transports import (
    bind_loopback,
    parse_listen,
    serve_http,
    serve_stdio,
    terminal_prompter,
)

__all__ = [
    "EgressCheck",
    "EndWatch",
    "Gateway",
    "Prompter",
    "Route",
    "argument_shape",
    "bind_loopback",
    "build_routes",
    "exposed_name",
    "exposed_uri",
    "get_prompt",
    "input_needed",
    "make_server",
    "mounted_endpoint",
    "new_token",
    "open_gateway",
    "parse_listen",
    "question_for",
    "read_resource",
    "result_payload",
    "serve_http",
    "serve_stdio",
    "sole_exception",
    "split_uri",
    "terminal_prompter",
    "text_result",
    "tools_payload",
    "write_audit",
]
