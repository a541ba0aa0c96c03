"""The transport-free gateway: skills, their catalogs, tool calls, interactive tools."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import mcp_types as types
from mcp.shared.exceptions import MCPError

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.errors import SkillError, ToolsChangedError, UsageError, sole_exception
from perstack_sandbox.gateway._audit import argument_shape, audited
from perstack_sandbox.gateway._catalog import (
    Catalog,
    Route,
    build_named,
    build_routes,
    exposed_name,
    exposed_uri,
)
from perstack_sandbox.gateway._hosts import EVERY_FORWARDABLE, Hosts
from perstack_sandbox.gateway._pending import PendingCalls
from perstack_sandbox.gateway._results import input_needed, question_for, text_result

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.gateway._hosts import Responder
    from perstack_sandbox.plan import InteractiveTool
    from perstack_sandbox.skills import SkillAnswer, SkillRequest, SkillSession


T = TypeVar("T")

NOTIFY_TIMEOUT_S: Final = 2.0  # telling one client that the run is over; it may not read

Prompter: TypeAlias = "Callable[[str], Awaitable[str | None]]"
"""Asks the user a question and returns the answer (None: declined or cancelled)."""

EgressCheck: TypeAlias = "Callable[[], Awaitable[str | None]]"
"""Says why the sandbox lost its egress, or None while it has it (runs off the event loop)."""

EndWatch: TypeAlias = "Callable[[], Awaitable[str]]"
"""Returns once the run's sandbox has gone (`down`, a kill, the engine), saying how."""


async def _pinned_listing(skill: SkillSession, *, strict: bool) -> Sequence[types.Tool]:
    """Return a skill's tools; one its pin refused offers none after the start (`strict`: raise).

    At start a refusal fails the run with the diff (nothing has been served yet); mid-run,
    after a `tools/list_changed`, the other skills keep serving and every call to the
    refused one answers with the diff.
    """
    try:
        return await skill.list_tools()
    except ToolsChangedError:
        if strict:
            raise
        return []


class Gateway:
    """Routes host requests to the skills and skill requests to the hosts; transport-free.

    It is also the skills' bridge (`SkillBridge`): what they may ask and tell the host clients
    goes through `hosts`, with resource URIs in the form the host clients see.
    """

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
        returns a reason, sandboxed tool calls are refused with it. Every forwarded request is
        reported to the run's own `audit` sink.
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
        self.hosts = Hosts(audit)
        self.pending = PendingCalls()
        self.catalog = Catalog(prefix_tools, {name: s.spec for name, s in self.skills.items()})
        self.subscriptions: dict[tuple[str, str], int] = {}  # (skill, URI) -> host subscribers
        self.tasks: dict[str, str] = {}  # task id -> the skill that runs it
        self.log_level: types.LoggingLevel | None = None  # the host clients' latest setLevel
        self._task_group: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()

    @property
    def _routes(self) -> dict[str, Route]:
        return self.catalog.tools

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start every non-lazy skill (concurrently) and check names for collisions.

        Raises:
            SkillError: a skill failed to start.
            GatewayError: two skills expose the same tool name.

        """
        self._task_group = task_group
        for skill in self.skills.values():
            skill.bind(task_group, self)
        self.pending.bind(task_group)
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
        await self._refresh(include_lazy=False, strict=True)

    async def _refresh(self, *, include_lazy: bool, strict: bool = False) -> None:
        listed = [s for s in self.skills.values() if s.is_running or include_lazy]
        tools: dict[str, Sequence[types.Tool]] = {}
        for skill in self.skills.values():
            if skill in listed:
                tools[skill.name] = await _pinned_listing(skill, strict=strict)
            elif skill.spec.pick:  # names known before start: check them early
                tools[skill.name] = [
                    types.Tool(name=name, input_schema={"type": "object"})
                    for name in skill.spec.pick
                    if name not in skill.spec.omit
                ]
        prompts = {s.name: await s.list_prompts() for s in listed}
        resources = {s.name: await s.list_resources() for s in listed}
        templates = {s.name: await s.list_resource_templates() for s in listed}
        hidden = {(s.name, uri) for s in listed for uri in await s.hidden_resources()}
        prefix = self.prefix_tools
        catalog = self.catalog
        catalog.hidden = hidden
        catalog.tools = build_routes(tools, self.interactive, prefix=prefix)
        catalog.prompts = build_named(
            "prompt name", prompts, lambda p: p.name, lambda s, n: exposed_name(s, n, prefix=prefix)
        )
        catalog.resources = build_named(
            "resource URI",
            resources,
            lambda r: r.uri,
            lambda s, u: exposed_uri(s, u, prefix=prefix),
        )
        catalog.templates = build_named(
            "resource template",
            templates,
            lambda t: t.uri_template,
            lambda s, u: exposed_uri(s, u, prefix=prefix),
        )

    async def refreshed(self) -> Catalog:
        """Return the catalog after listing every skill (starts lazy skills: a lister uses them).

        Raises:
            SkillError: a lazy skill failed to start.
            GatewayError: two skills expose the same name, URI or template.

        """
        async with self._lock:
            await self._refresh(include_lazy=True)
            return self.catalog

    async def list_tools(self) -> list[types.Tool]:
        """Every exposed tool (starts lazy skills).

        Raises:
            SkillError: a lazy skill failed to start.
            GatewayError: a lazy skill's tools collide with another skill's.

        """
        return [route.tool for route in (await self.refreshed()).tools.values()]

    def route(self, name: str) -> Route:
        """Find the route of an exposed tool name.

        Raises:
            UsageError: no skill offers that tool.
            ToolsChangedError: the skill that offered it was refused (its tools changed).

        """
        route = self._routes.get(name)
        if route is None:
            for skill in self.skills.values():
                pin = skill.pin
                if pin is not None and pin.refusal is not None:
                    pinned = {
                        exposed_name(skill.name, str(t.get("name")), prefix=self.prefix_tools)
                        for t in pin.locked
                    }
                    if name in pinned:
                        raise ToolsChangedError(pin.refusal)
            known = ", ".join(sorted(self._routes)) or "none"
            raise UsageError(f"no tool named {name!r}; available: {known}")
        return route

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        elicit: Prompter | None = None,
        responder: Responder | None = None,
    ) -> types.CallToolResult:
        """Call one exposed tool; the answer is the skill's CallToolResult.

        `responder` is the host request this call serves: the skill's questions, progress and
        log messages go to it.

        Raises:
            UsageError: no skill offers that tool.
            SkillError: the skill died, timed out or cannot start.
            MCPError: the skill answered with a JSON-RPC error.

        """
        if name not in self._routes:
            async with self._lock:
                await self._refresh(include_lazy=True)
        route = self.route(name)
        shape = argument_shape(arguments or {})
        with audited(self.audit, "tools/call", route.skill, tool=name, argShape=shape) as entry:
            problem = self.stop_reason
            if problem is None and self.egress_check is not None and route.interactive is None:
                problem = await self.egress_check()
            if problem is not None:
                self.audit.warning(problem)
                entry.outcome = "refused-egress-down"
                return text_result(problem, error=True)
            if route.interactive is not None:
                result = await self._ask(
                    route.interactive, arguments or {}, elicit or self.prompter
                )
            else:
                result = await self.forward(
                    route.skill,
                    responder,
                    lambda skill: skill.call_tool(
                        route.original,
                        arguments,
                        progress=responder.progress if responder is not None else None,
                    ),
                )
                result = self.catalog.expose_results(route.skill, result)
            entry.outcome = "isError" if result.is_error else "ok"
            return result

    async def forward(
        self,
        skill: str,
        responder: Responder | None,
        send: Callable[[SkillSession], Awaitable[T]],
    ) -> T:
        """Run `send(skill)` with the skill's questions and logs routed to `responder`."""
        session = self.skills[skill]
        if responder is None:
            return await send(session)
        with self.hosts.responding(skill, responder):
            return await send(session)

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

    def declared_capabilities(self) -> types.ClientCapabilities:
        """Return what skills are told: the host clients' forwardable capabilities."""
        return self.hosts.declared_capabilities()

    def declare_every_capability(self) -> None:
        """Tell the skills every capability a host client could bring (before their next use).

        A skill may list more tools to a client that can answer its questions (elicitation,
        sampling); `lock` pins the tools listed so, the most any client will see.
        """
        self.hosts.declare(EVERY_FORWARDABLE)

    async def skill_request(self, skill: str, request: SkillRequest) -> SkillAnswer:
        """Forward a skill's request to a host client (see `Hosts.skill_request`)."""
        return await self.hosts.skill_request(skill, request)

    async def skill_notification(self, skill: str, notification: types.ServerNotification) -> None:
        """Pass a skill's notification to the host clients, URIs in their form."""
        if isinstance(notification, types.ResourceUpdatedNotification):
            uri = exposed_uri(skill, notification.params.uri, prefix=self.prefix_tools)
            params = notification.params.model_copy(update={"uri": uri})
            await self.hosts.publish_update(types.ResourceUpdatedNotification(params=params))
            return
        await self.hosts.skill_notification(skill, notification)

    def skill_started(self, skill: str) -> None:
        """Tell a (re)started skill the log level and subscriptions the host clients asked for."""
        uris = [uri for (owner, uri), n in self.subscriptions.items() if owner == skill and n]
        if self._task_group is not None and (uris or self.log_level is not None):
            # Not awaited here: the skill is still starting, under its session's lock.
            self._task_group.start_soon(self._tell_again, skill, uris)

    async def _tell_again(self, skill: str, uris: list[str]) -> None:
        session = self.skills[skill]
        capabilities = session.capabilities or types.ServerCapabilities()
        requests: list[types.ClientRequest] = []
        if self.log_level is not None and capabilities.logging is not None:
            requests.append(
                types.SetLevelRequest(params=types.SetLevelRequestParams(level=self.log_level))
            )
        if capabilities.resources is not None and capabilities.resources.subscribe:
            requests += [
                types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)) for uri in uris
            ]
        try:
            for request in requests:
                await session.send(request, types.EmptyResult)
        except (SkillError, MCPError) as exc:
            self.audit.warning(f"skill {skill!r}: its log level and subscriptions were lost: {exc}")

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
