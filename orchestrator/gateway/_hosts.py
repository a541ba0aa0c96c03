"""The host side of the gateway: what host clients declared, and how skills reach them.

- **Capabilities.** Skills are told the elicitation, sampling and roots capabilities the host
  clients declared (their union, so a second client never takes one away from the first).
- **Requests from a skill** (elicitation, sampling, roots) go to the host request that the skill
  is serving at that moment (a `Responder`; the latest one, when several are in flight), else to
  a connected handshake-era client that declared the capability. With nobody able to answer,
  the skill gets a clear JSON-RPC error. Each is audited with the tool it belongs to.
- **Notifications from a skill**: log messages are tagged with the skill (`logger` becomes
  `skill` or `skill/logger`) and go to every handshake-era client at its level, and to the
  2026-07-28 requests in flight to that skill that opted in; list changes and resource updates
  go to handshake-era clients (updates only to those that subscribed) and to the 2026-07-28
  `subscriptions/listen` streams.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, get_args

import anyio
import mcp_types as types
from mcp.server.connection import allowed_log_levels
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.gateway._audit import audited

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from mcp.server.context import ServerRequestContext

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.skills import SkillAnswer, SkillRequest


logger = logging.getLogger(__name__)

LOG_LEVELS: Final = get_args(types.LoggingLevel)
CapabilityT = TypeVar(
    "CapabilityT", types.ElicitationCapability, types.SamplingCapability, types.RootsCapability
)
_EVENTS: Final[dict[str, Callable[[], ServerEvent]]] = {
    "notifications/tools/list_changed": ToolsListChanged,
    "notifications/prompts/list_changed": PromptsListChanged,
    "notifications/resources/list_changed": ResourcesListChanged,
}


# Every capability a host client could bring that the gateway passes on to skills.
EVERY_FORWARDABLE: Final = types.ClientCapabilities(
    elicitation=types.ElicitationCapability(
        form=types.FormElicitationCapability(), url=types.UrlElicitationCapability()
    ),
    sampling=types.SamplingCapability(
        context=types.SamplingContextCapability(), tools=types.SamplingToolsCapability()
    ),
    roots=types.RootsCapability(list_changed=True),
)


def forwardable(capabilities: types.ClientCapabilities | None) -> types.ClientCapabilities:
    """Return the part of a host client's capabilities the gateway passes on to skills."""
    if capabilities is None:
        return types.ClientCapabilities()
    return types.ClientCapabilities(
        elicitation=capabilities.elicitation,
        sampling=capabilities.sampling,
        roots=capabilities.roots,
    )


def merged(
    old: types.ClientCapabilities, new: types.ClientCapabilities
) -> types.ClientCapabilities:
    """Return the union of two forwardable capability sets (sub-capabilities included)."""
    return types.ClientCapabilities(
        elicitation=_union(old.elicitation, new.elicitation),
        sampling=_union(old.sampling, new.sampling),
        roots=_union(old.roots, new.roots),
    )


def _union(old: CapabilityT | None, new: CapabilityT | None) -> CapabilityT | None:
    if old is None or new is None:
        return old if new is None else new
    both = {**old.model_dump(exclude_none=True), **new.model_dump(exclude_none=True)}
    for key, value in old.model_dump().items():
        if isinstance(value, bool) and value:
            both[key] = True
    return type(old).model_validate(both)


def can_answer(capabilities: types.ClientCapabilities | None, request: SkillRequest) -> bool:
    """Whether a client with `capabilities` can answer a skill's `request`."""
    if capabilities is None:
        return False
    if isinstance(request, types.ElicitRequest):
        elicitation = capabilities.elicitation
        if elicitation is None:
            return False
        if isinstance(request.params, types.ElicitRequestURLParams):
            return elicitation.url is not None
        return elicitation.form is not None or elicitation.url is None
    if isinstance(request, types.CreateMessageRequest):
        return capabilities.sampling is not None
    return capabilities.roots is not None


class Responder(Protocol):
    """One host request in flight to a skill: answers that skill's requests for it."""

    tool: str | None

    def can_answer(self, request: SkillRequest) -> bool:
        """Whether this host client can answer `request`."""

    async def answer(self, request: SkillRequest) -> SkillAnswer:
        """Forward `request` to the host client and return its answer."""

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Deliver a log message on this request (2026-07-28: where the client opted in)."""

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Report progress against the host request's progress token."""


class RequestResponder:
    """A host request served through its own request-scoped channel."""

    def __init__(self, ctx: ServerRequestContext[Any, Any], tool: str | None = None) -> None:
        """Answer for the host request of `ctx` (`tool`: the exposed tool it calls, if any)."""
        self.ctx = ctx
        self.tool = tool
        self.modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

    def can_answer(self, request: SkillRequest) -> bool:
        """Handshake-era only: a 2026-07-28 request asks through InputRequiredResult instead."""
        return not self.modern and can_answer(self.ctx.session.client_capabilities, request)

    async def answer(self, request: SkillRequest) -> SkillAnswer:
        """Send `request` to the host client on this request's stream."""
        return await ask_host(self.ctx, request, related=True)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Deliver a log message (2026-07-28 requests only; others get them per connection)."""
        if self.modern:
            await log_on_request(self.ctx, params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Report progress to the host client (nothing if it gave no progress token)."""
        await self.ctx.session.report_progress(progress, total, message)


async def ask_host(
    ctx: ServerRequestContext[Any, Any], request: SkillRequest, *, related: bool
) -> SkillAnswer:
    """Send a skill's request to the host client of `ctx`; its errors become the answer."""
    metadata = ServerMessageMetadata(related_request_id=ctx.request_id) if related else None
    result_type: Any = {
        "elicitation/create": types.ElicitResult,
        "roots/list": types.ListRootsResult,
    }.get(request.method, types.CreateMessageResult)
    if isinstance(request, types.CreateMessageRequest) and request.params.tools:
        result_type = types.CreateMessageResultWithTools
    try:
        answer: SkillAnswer = await ctx.session.send_request(request, result_type, None, metadata)
    except MCPError as exc:
        return exc.error
    return answer


async def log_on_request(
    ctx: ServerRequestContext[Any, Any], params: types.LoggingMessageNotificationParams
) -> None:
    """Send a log message on the stream of `ctx`'s request, if it opted in at that level."""
    if params.level in allowed_log_levels(ctx.protocol_version, ctx.meta):
        notification = types.LoggingMessageNotification(params=params)
        await ctx.session.send_notification(notification, related_request_id=ctx.request_id)


@dataclass
class Channel:
    """A connected handshake-era host client: its standing stream, level and subscriptions."""

    ctx: ServerRequestContext[Any, Any]
    level: types.LoggingLevel | None = None
    uris: set[str] = field(default_factory=set)


class Hosts:
    """The gateway's bridge to its host clients (implements the skills' `SkillBridge`)."""

    def __init__(self, audit: AuditSink = NULL_SINK) -> None:
        """Start with no host client (skills are told no capability until one connects).

        The skills' questions to the clients are recorded in the run's `audit` sink.
        """
        self.audit = audit
        self.bus = InMemorySubscriptionBus()
        self._declared = types.ClientCapabilities()
        self._responders: dict[str, list[Responder]] = defaultdict(list)
        self._channels: dict[int, Channel] = {}

    def note_client(self, ctx: ServerRequestContext[Any, Any]) -> None:
        """Record a host client's capabilities, and its standing channel (handshake era)."""
        session = ctx.session
        declared = session.client_capabilities
        if declared is not None and (declared.elicitation or declared.sampling or declared.roots):
            # Skills compare it with what they were told at their next use (SkillSession).
            self._declared = merged(self._declared, forwardable(declared))
        params = session.client_params
        if params is not None and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            channel = self._channels.get(id(params))
            if channel is None:
                self._channels[id(params)] = Channel(ctx)
            else:
                channel.ctx = ctx

    def channel(self, ctx: ServerRequestContext[Any, Any]) -> Channel | None:
        """Return the standing channel of the handshake-era client of `ctx`, if it has one."""
        params = ctx.session.client_params
        return self._channels.get(id(params)) if params is not None else None

    def declared_capabilities(self) -> types.ClientCapabilities:
        """Return what skills are told (the host clients' forwardable capabilities)."""
        return self._declared

    def declare(self, capabilities: types.ClientCapabilities) -> None:
        """Tell the skills `capabilities` too, as if a host client had declared them."""
        self._declared = merged(self._declared, forwardable(capabilities))

    @contextmanager
    def responding(self, skill: str, responder: Responder) -> Iterator[None]:
        """Route `skill`'s requests and logs to `responder` while a host request is in flight."""
        self._responders[skill].append(responder)
        try:
            yield
        finally:
            self._responders[skill].remove(responder)

    def responders(self, skill: str) -> list[Responder]:
        """Return the host requests in flight to `skill`, oldest first."""
        return list(self._responders[skill])

    async def skill_request(self, skill: str, request: SkillRequest) -> SkillAnswer:
        """Forward a skill's request to a host client that can answer it, or refuse clearly."""
        fields: dict[str, Any] = {}
        if isinstance(request, types.ElicitRequest):
            fields["mode"] = (
                "url" if isinstance(request.params, types.ElicitRequestURLParams) else "form"
            )
        responder = next(
            (r for r in reversed(self._responders[skill]) if r.can_answer(request)), None
        )
        tool = responder.tool if responder is not None else None
        with audited(self.audit, request.method, skill, tool=tool, **fields) as entry:
            if responder is not None:
                answer = await responder.answer(request)
            else:
                answer = await self._ask_any_channel(skill, request)
            entry.outcome = _outcome(answer)
            return answer

    async def _ask_any_channel(self, skill: str, request: SkillRequest) -> SkillAnswer:
        for channel in reversed(list(self._channels.values())):
            if can_answer(channel.ctx.session.client_capabilities, request):
                return await ask_host(channel.ctx, request, related=False)
        return types.ErrorData(
            code=types.INVALID_REQUEST,
            message=(
                f"skill {skill!r} sent {request.method}, but no connected client can answer it "
                "(none declared that capability, or only 2026-07-28 clients with no request "
                "of theirs in flight)"
            ),
        )

    async def skill_notification(self, skill: str, notification: types.ServerNotification) -> None:
        """Pass on a skill's log message, list change, resource update or task status."""
        if isinstance(notification, types.LoggingMessageNotification):
            await self._log(skill, notification.params)
        elif notification.method in _EVENTS:
            await self.bus.publish(_EVENTS[notification.method]())
            await self._broadcast(notification)
        elif isinstance(notification, types.ResourceUpdatedNotification):
            await self.bus.publish(ResourceUpdated(uri=notification.params.uri))
            await self._broadcast(notification, uri=notification.params.uri)
        elif not isinstance(notification, types.ProgressNotification):
            # Task status, a finished URL elicitation...: for the handshake-era clients. (Progress
            # reaches the caller through its request's progress callback instead.)
            await self._broadcast(notification)

    async def publish_update(self, notification: types.ResourceUpdatedNotification) -> None:
        """Announce a resource update (URI already in the host's form)."""
        await self.bus.publish(ResourceUpdated(uri=notification.params.uri))
        await self._broadcast(notification, uri=notification.params.uri)

    async def _log(self, skill: str, params: types.LoggingMessageNotificationParams) -> None:
        tag = f"{skill}/{params.logger}" if params.logger else skill
        tagged = params.model_copy(update={"logger": tag})
        for responder in self.responders(skill):
            await responder.log(tagged)
        notification = types.LoggingMessageNotification(params=tagged)
        await self._broadcast(notification, level=params.level)

    async def _broadcast(
        self,
        notification: types.ServerNotification,
        *,
        uri: str | None = None,
        level: types.LoggingLevel | None = None,
    ) -> None:
        for key, channel in list(self._channels.items()):
            if uri is not None and uri not in channel.uris:
                continue
            if level is not None and not _at_least(level, channel.level):
                continue
            try:
                await channel.ctx.session.send_notification(notification)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, MCPError):
                self._channels.pop(key, None)  # that client is gone


def _at_least(level: types.LoggingLevel, threshold: types.LoggingLevel | None) -> bool:
    return threshold is None or LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def _outcome(answer: SkillAnswer) -> str:
    if isinstance(answer, types.ErrorData):
        return "refused" if answer.code == types.INVALID_REQUEST else "error"
    if isinstance(answer, types.ElicitResult):
        return answer.action
    return "ok"
