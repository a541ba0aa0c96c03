"""The gateway: one MCP server that exposes every skill's tools to the host client.

Tools keep their original names (after pick/omit); a name offered by two skills is a startup
error unless `--prefix-tools` exposes `skill__tool` everywhere. Interactive tools ask the host
client's user through MCP elicitation (form mode; on 2026-07-28 connections as an
`InputRequiredResult`), a terminal prompt from `call`, or else answer that input is needed.
Tool calls are logged by name and argument shape only, never values.

Transports live in `orchestrator.transports`: stdio, and streamable HTTP on 127.0.0.1 behind a
bearer token and an Origin check.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anyio
import anyio.to_thread
import mcp_types as types
import uvicorn
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from orchestrator.errors import GatewayError, SkillError, UsageError
from orchestrator.http_guard import BearerOriginGuard, loopback_origins

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from mcp.server.context import ServerRequestContext

    from orchestrator.plan import InteractiveTool
    from orchestrator.skills import SkillSession

logger = logging.getLogger(__name__)

PREFIX_SEPARATOR: Final = "__"
MAX_PORT: Final = 65535
LISTEN_BACKLOG: Final = 128
ANSWER_KEY: Final = "answer"
ANSWER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {ANSWER_KEY: {"type": "string", "title": "Your answer"}},
    "required": [ANSWER_KEY],
}
_ELICIT_KEY: Final = "perstack-sandbox/answer"
_QUESTION_KEYS: Final = ("question", "message", "prompt", "text", "action")


Prompter: TypeAlias = "Callable[[str], Awaitable[str | None]]"
"""Asks the user a question and returns the answer (None: declined or cancelled)."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where an exposed tool name leads."""

    exposed: str
    skill: str
    original: str
    tool: types.Tool
    interactive: InteractiveTool | None = None


def argument_shape(value: object) -> object:
    """Describe a JSON value by its shape only: keys and type names, never the values."""
    if isinstance(value, dict):
        return {str(key): argument_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes: list[object] = []
        for item in value:
            shape = argument_shape(item)
            if shape not in shapes:
                shapes.append(shape)
        return shapes
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), "value")


def exposed_name(skill: str, tool: str, *, prefix: bool) -> str:
    """Return the name a host client sees for `tool` of `skill`."""
    return f"{skill}{PREFIX_SEPARATOR}{tool}" if prefix else tool


def build_routes(
    tools_by_skill: Mapping[str, Sequence[types.Tool]],
    interactive: Sequence[InteractiveTool] = (),
    *,
    prefix: bool = False,
) -> dict[str, Route]:
    """Map exposed names to skills; a collision names both skills and how to fix it.

    Raises:
        GatewayError: two skills expose the same name.

    """
    routes: dict[str, Route] = {}
    candidates = [
        (skill, tool, None) for skill, tools in tools_by_skill.items() for tool in tools
    ] + [(item.skill, _interactive_tool(item), item) for item in interactive]
    for skill, tool, item in candidates:
        name = exposed_name(skill, tool.name, prefix=prefix)
        if name in routes:
            raise GatewayError(_collision(routes[name].skill, skill, tool.name))
        exposed = tool.model_copy(update={"name": name})
        routes[name] = Route(name, skill, tool.name, exposed, item)
    return routes


def _collision(first: str, second: str, tool: str) -> str:
    return (
        f"tool name {tool!r} is offered by both skill {first!r} and skill {second!r}. "
        f"Use pick/omit in perstack.toml to keep one of them, or run with --prefix-tools "
        f"(exposes {exposed_name(first, tool, prefix=True)!r} and "
        f"{exposed_name(second, tool, prefix=True)!r})"
    )


def _interactive_tool(item: InteractiveTool) -> types.Tool:
    schema = item.input_schema or {"type": "object"}
    return types.Tool(name=item.name, description=item.description or None, input_schema=schema)


class Gateway:
    """Routes tools/list and tools/call to the skills; the transport-free core."""

    def __init__(
        self,
        skills: Sequence[SkillSession],
        interactive: Sequence[InteractiveTool] = (),
        *,
        prefix_tools: bool = False,
        prompter: Prompter | None = None,
    ) -> None:
        """Prepare the gateway (skills start in `start`)."""
        self.skills = {skill.name: skill for skill in skills}
        self.interactive = tuple(interactive)
        self.prefix_tools = prefix_tools
        self.prompter = prompter
        self._routes: dict[str, Route] = {}
        self._listed: set[str] = set()
        self._lock = anyio.Lock()

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start every non-lazy skill (concurrently) and check names for collisions.

        Raises:
            SkillError: a skill failed to start.
            GatewayError: two skills expose the same tool name.

        """
        for skill in self.skills.values():
            skill.bind(task_group)
        eager = [skill for skill in self.skills.values() if not skill.spec.lazy_init]
        failures: list[SkillError] = []

        async def start_one(skill: SkillSession) -> None:
            try:
                await skill.ensure_started()
            except SkillError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as starting:
            for skill in eager:
                starting.start_soon(start_one, skill)
        if failures:
            raise SkillError("\n".join(str(failure) for failure in failures))
        await self._refresh(include_lazy=False)

    async def _refresh(self, *, include_lazy: bool) -> None:
        tools_by_skill: dict[str, Sequence[types.Tool]] = {}
        for skill in self.skills.values():
            if skill.is_running or include_lazy:
                tools_by_skill[skill.name] = await skill.list_tools()
            elif skill.spec.pick:  # names known before start: check them early
                tools_by_skill[skill.name] = [
                    types.Tool(name=name, input_schema={"type": "object"})
                    for name in skill.spec.pick
                    if name not in skill.spec.omit
                ]
        self._routes = build_routes(tools_by_skill, self.interactive, prefix=self.prefix_tools)
        self._listed = set(tools_by_skill) if include_lazy else self._listed

    async def list_tools(self) -> list[types.Tool]:
        """Every exposed tool (starts lazy skills: a client that lists will call).

        Raises:
            SkillError: a lazy skill failed to start.
            GatewayError: a lazy skill's tools collide with another skill's.

        """
        async with self._lock:
            await self._refresh(include_lazy=True)
            return [route.tool for route in self._routes.values()]

    def route(self, name: str) -> Route:
        """Find the route of an exposed tool name.

        Raises:
            UsageError: no skill offers that tool.

        """
        route = self._routes.get(name)
        if route is None:
            known = ", ".join(sorted(self._routes)) or "none"
            raise UsageError(f"no tool named {name!r}; available: {known}")
        return route

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        elicit: Prompter | None = None,
    ) -> types.CallToolResult:
        """Call one exposed tool; the answer is the skill's CallToolResult.

        Raises:
            UsageError: no skill offers that tool.
            SkillError: the skill died, timed out or cannot start.
            MCPError: the skill answered with a JSON-RPC error.

        """
        if name not in self._routes:
            async with self._lock:
                await self._refresh(include_lazy=True)
        route = self.route(name)
        started = time.perf_counter()
        outcome = "error"
        try:
            if route.interactive is not None:
                result = await self._ask(
                    route.interactive, arguments or {}, elicit or self.prompter
                )
            else:
                result = await self.skills[route.skill].call_tool(route.original, arguments)
            outcome = "isError" if result.is_error else "ok"
            return result
        finally:
            logger.info(
                "tools/call %s (skill %s) args=%s -> %s in %.1f ms",
                name,
                route.skill,
                json.dumps(argument_shape(arguments or {}), sort_keys=True),
                outcome,
                (time.perf_counter() - started) * 1000,
            )

    async def _ask(
        self, item: InteractiveTool, arguments: Mapping[str, Any], ask: Prompter | None
    ) -> types.CallToolResult:
        message = question_for(item, arguments)
        if ask is None:
            return input_needed(item, message)
        answer = await ask(message)
        if answer is None:
            return _text_result(f"The user declined to answer {item.name!r}.", error=True)
        return _text_result(answer)

    async def close(self) -> None:
        """Stop every skill (bounded)."""
        async with anyio.create_task_group() as stopping:
            for skill in self.skills.values():
                stopping.start_soon(skill.stop)


def question_for(item: InteractiveTool, arguments: Mapping[str, Any]) -> str:
    """Return the text shown to the user for an interactive tool call."""
    for key in _QUESTION_KEYS:
        value = arguments.get(key)
        if isinstance(value, str) and value.strip():
            return value
    detail = json.dumps(dict(arguments), sort_keys=True) if arguments else ""
    return "\n".join(part for part in (item.description or item.name, detail) if part)


def input_needed(item: InteractiveTool, message: str) -> types.CallToolResult:
    """Return the error result for an interactive tool when nobody can be asked."""
    return _text_result(
        f"Input is needed from the user for {item.skill}/{item.name}, but this client supports "
        f"neither MCP elicitation nor a terminal prompt. Question: {message}",
        error=True,
    )


def _text_result(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


def tools_payload(tools: Sequence[types.Tool]) -> list[dict[str, Any]]:
    """Return tools as MCP JSON (camelCase keys, no nulls)."""
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


def result_payload(result: types.CallToolResult) -> dict[str, Any]:
    """Return a CallToolResult as MCP JSON (camelCase keys, no nulls)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def make_server(gateway: Gateway, *, name: str = "perstack-sandbox") -> Server[Any]:
    """Build the low-level MCP server whose handlers forward to `gateway`."""

    async def on_list_tools(
        _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            return types.ListToolsResult(tools=await gateway.list_tools())
        except (SkillError, GatewayError) as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from exc

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            route = gateway.route(params.name)
        except UsageError:
            route = None
        if route is not None and route.interactive is not None and _is_modern(ctx):
            return await _modern_interactive(gateway, ctx, params, route.interactive)
        try:
            return await gateway.call_tool(params.name, params.arguments, elicit=_elicitor(ctx))
        except UsageError as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from exc
        except SkillError as exc:
            return _text_result(str(exc), error=True)

    return Server(name, version="0.1.0", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def _is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _supports_form_elicitation(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def _elicitor(ctx: ServerRequestContext[Any, Any]) -> Prompter | None:
    """Return a prompter over handshake-era elicitation/create, if the client can answer."""
    if not _supports_form_elicitation(ctx) or not ctx.session.can_send_request:
        return None

    async def ask(message: str) -> str | None:
        result = await ctx.session.elicit_form(
            message, ANSWER_SCHEMA, related_request_id=ctx.request_id
        )
        return _accepted_answer(result)

    return ask


def _accepted_answer(result: types.ElicitResult) -> str | None:
    if result.action != "accept" or not result.content:
        return None
    answer = result.content.get(ANSWER_KEY)
    return None if answer is None else str(answer)


async def _modern_interactive(
    gateway: Gateway,
    ctx: ServerRequestContext[Any, Any],
    params: types.CallToolRequestParams,
    item: InteractiveTool,
) -> types.CallToolResult | types.InputRequiredResult:
    """2026-07-28 elicitation: ask via InputRequiredResult, answer on the retry."""
    arguments = params.arguments or {}
    message = question_for(item, arguments)
    response = (params.input_responses or {}).get(_ELICIT_KEY)
    if response is None:
        if not _supports_form_elicitation(ctx):
            return await gateway.call_tool(params.name, arguments, elicit=None)
        request = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=message, requested_schema=ANSWER_SCHEMA)
        )
        return types.InputRequiredResult(input_requests={_ELICIT_KEY: request})

    async def replay(_message: str) -> str | None:
        return _accepted_answer(response) if isinstance(response, types.ElicitResult) else None

    return await gateway.call_tool(params.name, arguments, elicit=replay)


@asynccontextmanager
async def open_gateway(
    skills: Sequence[SkillSession],
    interactive: Sequence[InteractiveTool] = (),
    *,
    prefix_tools: bool = False,
    prompter: Prompter | None = None,
) -> AsyncIterator[Gateway]:
    """Start the skills and yield the gateway; every skill is stopped on exit.

    Raises:
        SkillError: a non-lazy skill failed to start.
        GatewayError: two skills expose the same tool name.

    """
    gateway = Gateway(skills, interactive, prefix_tools=prefix_tools, prompter=prompter)
    try:
        async with anyio.create_task_group() as task_group:
            try:
                await gateway.start(task_group)
                yield gateway
            finally:
                with anyio.CancelScope(shield=True):
                    await gateway.close()
                task_group.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        sole = sole_exception(group)
        if sole is group:
            raise
        raise sole from sole.__cause__


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the one leaf of a chain of single-member groups, else the group itself."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
        current = current.exceptions[0]
    return group if isinstance(current, BaseExceptionGroup) else current


async def serve_stdio(gateway: Gateway) -> None:
    """Serve the gateway over this process's stdin/stdout until the client closes it."""
    server = make_server(gateway)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def parse_listen(address: str) -> tuple[str, int]:
    """Parse `--http HOST:PORT`; the host must be loopback (127.0.0.1 or localhost).

    Raises:
        UsageError: malformed, or not a loopback host.

    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= MAX_PORT:
        raise UsageError(f"--http wants HOST:PORT, got {address!r}")
    if host not in ("127.0.0.1", "localhost"):
        raise UsageError(f"--http must bind 127.0.0.1 (loopback only), got {host!r}")
    return "127.0.0.1", int(port_text)


async def serve_http(
    gateway: Gateway,
    *,
    port: int,
    token: str,
    on_ready: Callable[[str], None] | None = None,
    stop: anyio.Event | None = None,
) -> None:
    """Serve streamable HTTP on 127.0.0.1:`port` (0: any free port) behind the guard.

    `on_ready(url)` is called once the socket listens; setting `stop` shuts down cleanly.

    Raises:
        GatewayError: the port cannot be bound.

    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(LISTEN_BACKLOG)  # listening before on_ready: clients may connect at once
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    actual = sock.getsockname()[1]
    origins = loopback_origins(actual)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"127.0.0.1:{actual}", f"localhost:{actual}"],
        allowed_origins=sorted(origins),
    )
    app = make_server(gateway).streamable_http_app(transport_security=security, host="127.0.0.1")
    guarded = BearerOriginGuard(app, token=token, allowed_origins=origins)
    config = uvicorn.Config(guarded, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        if stop is not None:

            async def watch() -> None:
                await stop.wait()
                server.should_exit = True

            group.start_soon(watch)
        if on_ready is not None:
            on_ready(f"http://127.0.0.1:{actual}/mcp")
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            group.cancel_scope.cancel()


def terminal_prompter() -> Prompter | None:
    """Return a prompter on the terminal, or None when stdin/stderr are not a TTY."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask_blocking(message: str) -> str | None:
        sys.stderr.write(f"{message}\n> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    async def ask(message: str) -> str | None:
        return await anyio.to_thread.run_sync(ask_blocking, message)

    return ask
