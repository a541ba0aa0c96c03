"""The MCP server over a `Gateway`: every request kind, in both protocol eras.

Handshake-era (2025-11-25) clients get the skills' questions (elicitation, sampling, roots) as
server-to-client requests on the stream of the call they belong to. 2026-07-28 clients get
them as `InputRequiredResult` and answer on the retry (`_pending`). Task-augmented tool calls
(`tools/call` with `task`) are passed through as they are, with `tasks/*` routed by task id.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from perstack_sandbox.errors import GatewayError, SkillError, UsageError
from perstack_sandbox.gateway import _requests as forward
from perstack_sandbox.gateway._hosts import RequestResponder, forwardable
from perstack_sandbox.gateway._results import question_for, text_result

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
    from mcp.server.session import ServerSession

    from perstack_sandbox.gateway._core import Gateway, Prompter
    from perstack_sandbox.gateway._hosts import Responder
    from perstack_sandbox.plan import InteractiveTool

ResultT = TypeVar("ResultT")

LOGGER_NAME: Final = "perstack-sandbox"
ANSWER_KEY: Final = "answer"
ANSWER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {ANSWER_KEY: {"type": "string", "title": "Your answer"}},
    "required": [ANSWER_KEY],
}
_ELICIT_KEY: Final = "perstack-sandbox/answer"
# What a handshake-era client is told beyond what the SDK derives from the handlers.
_TASKS_CAPABILITY: Final[dict[str, Any]] = {
    "list": {},
    "cancel": {},
    "requests": {"tools": {"call": {}}},
}
_LIST_CHANGED: Final = ("tools", "prompts", "resources")


def make_server(gateway: Gateway, *, name: str = "perstack-sandbox") -> Server[Any]:
    """Build the low-level MCP server whose handlers forward to `gateway`.

    When the gateway shuts down (its sandbox was taken down), every client that has sent a
    request gets the reason as an `error` log message.
    """
    handlers = _Handlers(gateway)
    gateway.stop_listeners.append(functools.partial(_tell_clients, handlers.sessions))
    server: Server[Any] = Server(
        name,
        version="0.1.0",
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_prompts=handlers.list_prompts,
        on_get_prompt=handlers.get_prompt,
        on_list_resources=handlers.list_resources,
        on_list_resource_templates=handlers.list_templates,
        on_read_resource=handlers.read_resource,
        on_subscribe_resource=handlers.subscribe,
        on_unsubscribe_resource=handlers.unsubscribe,
        on_subscriptions_listen=handlers.listen,
        on_completion=handlers.complete,
        # Without it, the SDK checks a 2026-07-28 call's Mcp-Param headers by running the whole
        # tools/list handler (every skill's catalog) for each call.
        get_tool_input_schema=handlers.input_schema,
    )
    # Removed from 2026-07-28, still served to handshake-era clients (the SDK's own advice).
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, handlers.set_level)
    for method in forward.TASK_METHODS:
        server.add_request_handler(method, types.RequestParams, handlers.task)
    server.add_request_handler("tasks/list", types.PaginatedRequestParams, handlers.list_tasks)
    server.middleware.append(handlers.middleware)
    return server


@contextmanager
def _as_mcp_errors() -> Iterator[None]:
    """Our errors as JSON-RPC errors: bad names are invalid params, the rest internal."""
    try:
        yield
    except UsageError as exc:
        raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from exc
    except (SkillError, GatewayError) as exc:
        raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from exc


async def _tell_clients(sessions: dict[int, ServerSession], reason: str) -> None:
    """Send `reason` as an error log message to every known client (best effort)."""
    for session in list(sessions.values()):
        with (
            warnings.catch_warnings(action="ignore", category=MCPDeprecationWarning),
            contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError),
        ):
            await session.send_log_message("error", reason, logger=LOGGER_NAME)


def _is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _can_be_asked(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether a 2026-07-28 client declared anything a skill could ask it for."""
    declared = forwardable(ctx.session.client_capabilities)
    return _is_modern(ctx) and declared != types.ClientCapabilities()


class _Handlers:
    """The request handlers of one gateway server."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._listen = ListenHandler(gateway.hosts.bus)
        # The latest session of each client connection (keyed by the connection's own
        # initialize params, which every request of that connection shares): told when the
        # run is taken down.
        self.sessions: dict[int, ServerSession] = {}

    async def middleware(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Note every client's capabilities; add what the SDK does not derive; tasks."""
        if ctx.method == "initialize":
            return _with_gateway_capabilities(await call_next(ctx))
        self.gateway.hosts.note_client(ctx)
        self.sessions[id(ctx.session.client_params)] = ctx.session
        params = ctx.params
        if ctx.method == "tools/call" and params is not None and params.get("task") is not None:
            tool = str(params.get("name"))
            forwarded = {key: value for key, value in params.items() if key != "_meta"}
            with _as_mcp_errors():
                return await forward.call_tool_as_task(
                    self.gateway, forwarded, RequestResponder(ctx, tool)
                )
        return await call_next(ctx)

    async def _run(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.InputResponseRequestParams,
        call: Callable[[Responder], Awaitable[ResultT]],
        tool: str | None = None,
    ) -> ResultT | types.InputRequiredResult:
        """Run a forwarded call: in the background for a 2026-07-28 client that can be asked."""
        with _as_mcp_errors():
            if _can_be_asked(ctx):
                return await self.gateway.pending.run(ctx, params, call, tool=tool)
            return await call(RequestResponder(ctx, tool))

    def input_schema(self, name: str) -> dict[str, Any] | None:
        """Return an exposed tool's input schema, as last listed (None: nothing to check)."""
        route = self.gateway.catalog.tools.get(name)
        return route.tool.input_schema if route is not None else None

    async def list_tools(
        self, _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        with _as_mcp_errors():
            return types.ListToolsResult(tools=await self.gateway.list_tools())

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        gateway = self.gateway
        try:
            route = gateway.route(params.name)
        except UsageError:
            route = None
        if route is not None and route.interactive is not None and _is_modern(ctx):
            return await _modern_interactive(gateway, ctx, params, route.interactive)
        if route is not None and route.interactive is not None:
            return await gateway.call_tool(params.name, params.arguments, elicit=_elicitor(ctx))

        async def call(responder: Responder) -> types.CallToolResult:
            try:
                return await gateway.call_tool(params.name, params.arguments, responder=responder)
            except SkillError as exc:
                return text_result(str(exc), error=True)

        result: types.CallToolResult | types.InputRequiredResult = await self._run(
            ctx, params, call, params.name
        )
        return result

    async def list_prompts(
        self, _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        with _as_mcp_errors():
            catalog = await self.gateway.refreshed()
        return types.ListPromptsResult(prompts=[named.item for named in catalog.prompts.values()])

    async def get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        async def call(responder: Responder) -> types.GetPromptResult:
            return await forward.get_prompt(self.gateway, params.name, params.arguments, responder)

        result: types.GetPromptResult | types.InputRequiredResult = await self._run(
            ctx, params, call
        )
        return result

    async def list_resources(
        self, _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        with _as_mcp_errors():
            catalog = await self.gateway.refreshed()
        items = [named.item for named in catalog.resources.values()]
        return types.ListResourcesResult(resources=items)

    async def list_templates(
        self, _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        with _as_mcp_errors():
            catalog = await self.gateway.refreshed()
        items = [named.item for named in catalog.templates.values()]
        return types.ListResourceTemplatesResult(resource_templates=items)

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        async def call(responder: Responder) -> types.ReadResourceResult:
            return await forward.read_resource(self.gateway, params.uri, responder)

        result: types.ReadResourceResult | types.InputRequiredResult = await self._run(
            ctx, params, call
        )
        return result

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        channel = self.gateway.hosts.channel(ctx)
        with _as_mcp_errors():
            if channel is None or params.uri not in channel.uris:
                await forward.subscribe(self.gateway, params.uri, on=True)
        if channel is not None:
            channel.uris.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        channel = self.gateway.hosts.channel(ctx)
        if channel is not None and params.uri in channel.uris:
            channel.uris.discard(params.uri)
            with _as_mcp_errors():
                await forward.subscribe(self.gateway, params.uri, on=False)
        return types.EmptyResult()

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """Serve a 2026-07-28 listen stream; its resource URIs are subscribed at their skills."""
        uris = list(params.notifications.resource_subscriptions or ())
        subscribed: list[str] = []
        try:
            with _as_mcp_errors():
                for uri in uris:
                    await forward.subscribe(self.gateway, uri, on=True)
                    subscribed.append(uri)
            return await self._listen(ctx, params)
        finally:
            for uri in subscribed:
                with _as_mcp_errors():
                    await forward.subscribe(self.gateway, uri, on=False)

    async def complete(
        self, _ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        with _as_mcp_errors():
            return await forward.complete(self.gateway, params)

    async def set_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        channel = self.gateway.hosts.channel(ctx)
        if channel is not None:
            channel.level = params.level
        with _as_mcp_errors():
            await forward.set_level(self.gateway, params.level)
        return types.EmptyResult()

    async def task(
        self, ctx: ServerRequestContext[Any, Any], _params: types.RequestParams
    ) -> dict[str, Any]:
        raw = {key: value for key, value in (ctx.params or {}).items() if key != "_meta"}
        with _as_mcp_errors():
            return await forward.task_request(self.gateway, ctx.method, raw, RequestResponder(ctx))

    async def list_tasks(
        self, _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams
    ) -> dict[str, Any]:
        with _as_mcp_errors():
            return await forward.list_tasks(self.gateway)


def _with_gateway_capabilities(result: HandlerResult) -> HandlerResult:
    """Declare list changes (forwarded from skills) and tasks in a handshake-era answer."""
    if not isinstance(result, dict) or not isinstance(result.get("capabilities"), dict):
        return result
    capabilities = dict(result["capabilities"])
    for kind in _LIST_CHANGED:
        if isinstance(capabilities.get(kind), dict):
            capabilities[kind] = {**capabilities[kind], "listChanged": True}
    capabilities["tasks"] = _TASKS_CAPABILITY
    return {**result, "capabilities": capabilities}


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
