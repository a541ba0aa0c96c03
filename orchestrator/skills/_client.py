"""The MCP client side of one skill connection: handshake, catalog, callbacks to the gateway.

A skill is told exactly the client capabilities its bridge declares (the gateway passes on what
its host client declared), because servers hide what a client cannot use: the everything server
registers `trigger-elicitation-request` only for a client that declared elicitation. The SDK's
`ClientSession.initialize` would declare capabilities from the callbacks it holds, so the
handshake is sent here with the bridge's capabilities instead. Every server-to-client request and
notification of the skill goes to the bridge.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, TypeVar

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from perstack_sandbox.errors import SkillError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from mcp.client.session import ClientRequestContext, IncomingMessage
    from mcp.shared._stream_protocols import ReadStream, WriteStream
    from mcp.shared.message import SessionMessage


logger = logging.getLogger(__name__)

CLIENT_INFO: Final = types.Implementation(name="perstack-sandbox", version="0.1.0")
NO_CAPABILITIES: Final = types.ClientCapabilities()

SkillRequest: TypeAlias = types.CreateMessageRequest | types.ElicitRequest | types.ListRootsRequest
"""A request a skill sends to its client (sampling, elicitation, roots)."""
AnswerT = TypeVar("AnswerT", bound=types.Result)
SkillAnswer: TypeAlias = (
    types.CreateMessageResult
    | types.CreateMessageResultWithTools
    | types.ElicitResult
    | types.ListRootsResult
    | types.ErrorData
)


class SkillBridge(Protocol):
    """What a skill connection needs from the side that serves the host clients."""

    def declared_capabilities(self) -> types.ClientCapabilities:
        """Return the client capabilities to declare to skills (the host clients' ones)."""

    async def skill_request(self, skill: str, request: SkillRequest) -> SkillAnswer:
        """Answer a skill's request to its client (forwarded to a host client, or refused)."""

    async def skill_notification(self, skill: str, notification: types.ServerNotification) -> None:
        """Pass on a skill's notification (log message, list change, resource update...)."""

    def skill_started(self, skill: str) -> None:
        """Learn that a skill has (re)started: what it was told before must be told again."""


class NoBridge:
    """The bridge of a gateway with no host client: declares nothing, refuses every request."""

    def declared_capabilities(self) -> types.ClientCapabilities:
        """Declare no capability."""
        return NO_CAPABILITIES

    async def skill_request(self, skill: str, request: SkillRequest) -> SkillAnswer:
        """Refuse: nobody can answer."""
        return types.ErrorData(
            code=types.INVALID_REQUEST,
            message=f"no client can answer {request.method} for skill {skill!r}",
        )

    async def skill_notification(self, skill: str, notification: types.ServerNotification) -> None:
        """Drop the notification."""
        del skill, notification

    def skill_started(self, skill: str) -> None:
        """Nothing to tell it again."""
        del skill


@dataclass
class SkillCatalog:
    """What a skill offers, as listed after its handshake (before any pick/omit)."""

    tools: list[types.Tool] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    templates: list[types.ResourceTemplate] = field(default_factory=list)


@dataclass
class SkillClient:
    """A live, initialised connection to one skill."""

    session: ClientSession
    dispatcher: JSONRPCDispatcher[Any]
    capabilities: types.ServerCapabilities
    declared: types.ClientCapabilities
    catalog: SkillCatalog


@asynccontextmanager
async def connect_client(  # noqa: PLR0913 - each a distinct collaborator of one connection
    skill: str,
    read: ReadStream[SessionMessage | Exception],
    write: WriteStream[SessionMessage],
    *,
    timeout_s: float,
    startup_timeout_s: float,
    bridge: SkillBridge,
    on_notification: Callable[[types.ServerNotification], Awaitable[None]],
) -> AsyncIterator[SkillClient]:
    """Open the MCP session with one skill over its streams, handshake, and list its catalog.

    `on_notification` sees every notification of the skill first (the session keeps its
    catalog fresh with it), then the bridge does.

    Raises:
        TimeoutError: no handshake and catalog within `startup_timeout_s`.
        SkillError: the skill speaks no protocol version we know.
        MCPError: the skill refused the handshake or a listing.

    """
    dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(read, write)

    async def ask(request: SkillRequest, expected: type[AnswerT]) -> AnswerT | types.ErrorData:
        answer = await bridge.skill_request(skill, request)
        if isinstance(answer, expected | types.ErrorData):
            return answer
        return _no_answer(request.method)

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        del context
        answer = await bridge.skill_request(skill, types.CreateMessageRequest(params=params))
        sampled = types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData
        return answer if isinstance(answer, sampled) else _no_answer("sampling/createMessage")

    async def elicitation(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        del context
        return await ask(types.ElicitRequest(params=params), types.ElicitResult)

    async def roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        del context
        return await ask(types.ListRootsRequest(), types.ListRootsResult)

    async def messages(message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            logger.debug("skill %r transport error: %s", skill, message)
            return
        await on_notification(message)

    declared = bridge.declared_capabilities()
    async with ClientSession(
        dispatcher=dispatcher,
        read_timeout_seconds=timeout_s,
        sampling_callback=sampling,
        elicitation_callback=elicitation,
        list_roots_callback=roots,
        message_handler=messages,
        client_info=CLIENT_INFO,
    ) as session:
        with anyio.fail_after(startup_timeout_s):
            result = await handshake(session, declared)
            catalog = await list_catalog(session, result.capabilities)
        yield SkillClient(session, dispatcher, result.capabilities, declared, catalog)


def _no_answer(method: str) -> types.ErrorData:
    return types.ErrorData(code=types.INTERNAL_ERROR, message=f"no answer to {method}")


async def handshake(
    session: ClientSession, capabilities: types.ClientCapabilities
) -> types.InitializeResult:
    """Initialise `session` declaring exactly `capabilities`.

    Raises:
        SkillError: the skill answered with a protocol version we do not speak.
        MCPError: the skill refused `initialize`.

    """
    result = await session.send_request(
        types.InitializeRequest(
            params=types.InitializeRequestParams(
                protocol_version=LATEST_HANDSHAKE_VERSION,
                capabilities=capabilities,
                client_info=CLIENT_INFO,
            )
        ),
        types.InitializeResult,
    )
    if result.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise SkillError(f"the skill speaks MCP {result.protocol_version!r}, which we do not")
    session.adopt(result)
    await session.send_notification(types.InitializedNotification())
    return result


async def list_catalog(
    session: ClientSession, capabilities: types.ServerCapabilities
) -> SkillCatalog:
    """List every tool, prompt, resource and template the skill declares (all pages)."""
    catalog = SkillCatalog(tools=await list_all(session, "tools"))
    if capabilities.prompts is not None:
        catalog.prompts = await list_all(session, "prompts")
    if capabilities.resources is not None:
        catalog.resources = await list_all(session, "resources")
        catalog.templates = await list_all(session, "templates")
    return catalog


async def list_all(session: ClientSession, kind: str) -> list[Any]:
    """Every item of one listing (`tools`, `prompts`, `resources` or `templates`), all pages."""
    listers: dict[str, Callable[..., Awaitable[Any]]] = {
        "tools": session.list_tools,
        "prompts": session.list_prompts,
        "resources": session.list_resources,
        "templates": session.list_resource_templates,
    }
    field_name = "resource_templates" if kind == "templates" else kind
    items: list[Any] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await listers[kind](params=params)
        items.extend(getattr(page, field_name))
        cursor = page.next_cursor
        if not cursor:
            return items
