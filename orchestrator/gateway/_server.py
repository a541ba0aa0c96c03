"""The MCP server over a `Gateway`, including elicitation for interactive tools."""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import TYPE_CHECKING, Any, Final

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from perstack_sandbox.errors import GatewayError, SkillError, UsageError
from perstack_sandbox.gateway._core import question_for, text_result

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext
    from mcp.server.session import ServerSession

    from perstack_sandbox.gateway._core import Gateway, Prompter
    from perstack_sandbox.plan import InteractiveTool


LOGGER_NAME: Final = "perstack-sandbox"
ANSWER_KEY: Final = "answer"
ANSWER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {ANSWER_KEY: {"type": "string", "title": "Your answer"}},
    "required": [ANSWER_KEY],
}
_ELICIT_KEY: Final = "perstack-sandbox/answer"


def make_server(gateway: Gateway, *, name: str = "perstack-sandbox") -> Server[Any]:
    """Build the low-level MCP server whose handlers forward to `gateway`.

    When the gateway shuts down (its sandbox was taken down), every client that has sent a
    request gets the reason as an `error` log message.
    """
    # The latest session of each client connection (keyed by the connection's own
    # initialize params, which every request of that connection shares).
    sessions: dict[int, ServerSession] = {}
    gateway.stop_listeners.append(functools.partial(_tell_clients, sessions))

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        sessions[id(ctx.session.client_params)] = ctx.session
        try:
            return types.ListToolsResult(tools=await gateway.list_tools())
        except (SkillError, GatewayError) as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from exc

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        sessions[id(ctx.session.client_params)] = ctx.session
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
            return text_result(str(exc), error=True)

    return Server(name, version="0.1.0", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


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
