"""The transport-free gateway: routes, collisions, calls, interactive tools, call log."""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.shared.exceptions import MCPError

from perstack_sandbox.audit import NULL_SINK, ToolCall
from perstack_sandbox.errors import GatewayError, SkillError, UsageError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.plan import InteractiveTool
    from perstack_sandbox.skills import SkillSession

PREFIX_SEPARATOR: Final = "__"
NOTIFY_TIMEOUT_S: Final = 2.0  # telling one client that the run is over; it may not read
_QUESTION_KEYS: Final = ("question", "message", "prompt", "text", "action")


Prompter: TypeAlias = "Callable[[str], Awaitable[str | None]]"
"""Asks the user a question and returns the answer (None: declined or cancelled)."""

EgressCheck: TypeAlias = "Callable[[], Awaitable[str | None]]"
"""Says why the sandbox lost its egress, or None while it has it (runs off the event loop)."""

EndWatch: TypeAlias = "Callable[[], Awaitable[str]]"
"""Returns once the run's sandbox has gone (`down`, a kill, the engine), saying how."""


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

    def __init__(  # noqa: PLR0913 - the skills, then one keyword per collaborator
        self,
        skills: Sequence[SkillSession],
        interactive: Sequence[InteractiveTool] = (),
        *,
        prefix_tools: bool = False,
        prompter: Prompter | None = None,
        egress_check: EgressCheck | None = None,
        audit: AuditSink = NULL_SINK,
    ) -> None:
        """Prepare the gateway (skills start in `start`).

        `await egress_check()` returns why the sandbox lost its egress (or None); while it
        returns a reason, sandboxed tool calls are refused with it. Every call is reported to
        the run's own `audit` sink.
        """
        self.skills = {skill.name: skill for skill in skills}
        self.interactive = tuple(interactive)
        self.prefix_tools = prefix_tools
        self.prompter = prompter
        self.egress_check = egress_check
        self.audit = audit
        # Set by `shut_down`: why the run is over; every later call is refused with it.
        self.stop_reason: str | None = None
        # Told the stop reason (the MCP server sends it to its clients as a log message).
        self.stop_listeners: list[Callable[[str], Awaitable[None]]] = []
        self._stopped = anyio.Event()
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
        began = datetime.now(UTC).isoformat(timespec="milliseconds")
        outcome = "error"
        try:
            problem = self.stop_reason
            if problem is None and self.egress_check is not None and route.interactive is None:
                problem = await self.egress_check()
            if problem is not None:
                self.audit.warning(problem)
                outcome = "refused-egress-down"
                return text_result(problem, error=True)
            if route.interactive is not None:
                result = await self._ask(
                    route.interactive, arguments or {}, elicit or self.prompter
                )
            else:
                result = await self.skills[route.skill].call_tool(route.original, arguments)
            outcome = "isError" if result.is_error else "ok"
            return result
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            shape = argument_shape(arguments or {})
            self.audit.tool_call(ToolCall(began, route.skill, name, shape, elapsed_ms, outcome))

    async def _ask(
        self, item: InteractiveTool, arguments: Mapping[str, Any], ask: Prompter | None
    ) -> types.CallToolResult:
        message = question_for(item, arguments)
        if ask is None:
            return input_needed(item, message)
        answer = await ask(message)
        if answer is None:
            return text_result(f"The user declined to answer {item.name!r}.", error=True)
        return text_result(answer)

    async def call_tool_checked(
        self, name: str, arguments: dict[str, Any] | None
    ) -> types.CallToolResult:
        """Call a tool for the `call` command: a skill's JSON-RPC error becomes our error.

        Raises:
            UsageError: no such tool, or the skill rejected the arguments (invalid params).
            SkillError: the skill died, timed out, or answered with another JSON-RPC error.

        """
        try:
            return await self.call_tool(name, arguments)
        except MCPError as exc:
            error_class = UsageError if exc.error.code == types.INVALID_PARAMS else SkillError
            skill = self.route(name).skill
            raise error_class(
                f"skill {skill!r} refused tools/call {name!r}: {exc.error.message} "
                f"(JSON-RPC error {exc.error.code})"
            ) from exc

    async def shut_down(self, reason: str) -> None:
        """Refuse every further call with `reason`, and tell the listeners (each bounded)."""
        self.stop_reason = reason
        self.audit.warning(reason)
        for listener in self.stop_listeners:
            with anyio.move_on_after(NOTIFY_TIMEOUT_S):
                await listener(reason)
        self._stopped.set()

    async def wait_stopped(self) -> str:
        """Wait until `shut_down` has told every listener; return its reason."""
        await self._stopped.wait()
        return self.stop_reason or ""

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
    return text_result(
        f"Input is needed from the user for {item.skill}/{item.name}, but this client supports "
        f"neither MCP elicitation nor a terminal prompt. Question: {message}",
        error=True,
    )


def text_result(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


def tools_payload(tools: Sequence[types.Tool]) -> list[dict[str, Any]]:
    """Return tools as MCP JSON (camelCase keys, no nulls)."""
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


def result_payload(result: types.CallToolResult) -> dict[str, Any]:
    """Return a CallToolResult as MCP JSON (camelCase keys, no nulls)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


@asynccontextmanager
async def open_gateway(  # noqa: PLR0913 - the skills, then one keyword per collaborator
    skills: Sequence[SkillSession],
    interactive: Sequence[InteractiveTool] = (),
    *,
    prefix_tools: bool = False,
    prompter: Prompter | None = None,
    egress_check: EgressCheck | None = None,
    audit: AuditSink = NULL_SINK,
    ends_when: EndWatch | None = None,
) -> AsyncIterator[Gateway]:
    """Start the skills and yield the gateway; every skill is stopped on exit.

    Once `ends_when()` returns (the sandbox went away), the gateway shuts down with what it
    said: later calls are refused with it, and every MCP client is told.

    Raises:
        SkillError: a non-lazy skill failed to start.
        GatewayError: two skills expose the same tool name.

    """
    gateway = Gateway(
        skills,
        interactive,
        prefix_tools=prefix_tools,
        prompter=prompter,
        egress_check=egress_check,
        audit=audit,
    )
    try:
        async with anyio.create_task_group() as task_group:
            try:
                await gateway.start(task_group)
                if ends_when is not None:
                    task_group.start_soon(_shut_down_when, gateway, ends_when)
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


async def _shut_down_when(gateway: Gateway, ends_when: EndWatch) -> None:
    await gateway.shut_down(await ends_when())


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the one leaf of a chain of single-member groups, else the group itself."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup) and len(current.exceptions) == 1:
        current = current.exceptions[0]
    return group if isinstance(current, BaseExceptionGroup) else current
