"""Skill requests for 2026-07-28 host clients: `InputRequiredResult` and the retry.

A 2026-07-28 server may not send requests to its client; it answers `InputRequiredResult`
instead and the client retries the call with the answers. Skills still speak the handshake era
and send `elicitation/create` (or sampling, or roots) in the middle of a call. So the gateway
runs such a call in the background: when the skill asks, the host request is answered with
`InputRequiredResult` (the skill's request embedded, a random `requestState` naming the call),
and the retry carrying that state hands the answers to the waiting skill and waits again, for
the result or the next question. A call whose client never comes back is cancelled.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.exceptions import MCPError

from perstack_sandbox.gateway._hosts import can_answer, log_on_request

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from mcp.server.context import ServerRequestContext

    from perstack_sandbox.gateway._hosts import Responder
    from perstack_sandbox.skills import SkillAnswer, SkillRequest


ANSWER_WAIT_S: Final = 600.0  # a person answering a form; after this the skill is told "no"
UNCLAIMED_S: Final = 60.0  # a finished call whose client never retried is forgotten after this

ResultT = TypeVar("ResultT")


@dataclass
class _Question:
    request: SkillRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: SkillAnswer | None = None
    sent: bool = False


class PendingCall(Generic[ResultT]):
    """One call whose skill may ask its client; also its `Responder` towards that skill."""

    def __init__(self, ctx: ServerRequestContext[Any, Any], tool: str | None) -> None:
        """Start a call for the host request of `ctx`."""
        self.token = secrets.token_urlsafe(24)
        self.ctx = ctx
        self.tool = tool
        self._questions: dict[str, _Question] = {}
        self._changed = anyio.Condition()
        self._done = False
        self._result: ResultT | None = None
        self._error: BaseException | None = None
        self.scope = anyio.CancelScope()
        self.claimed = anyio.Event()

    def can_answer(self, request: SkillRequest) -> bool:
        """Whether the host client (as of its latest request) declared what `request` needs."""
        return can_answer(self.ctx.session.client_capabilities, request)

    async def answer(self, request: SkillRequest) -> SkillAnswer:
        """Hold the skill's request until the client's retry brings the answer."""
        key = f"q{len(self._questions) + 1}"
        question = _Question(request)
        self._questions[key] = question
        await self._notify()
        with anyio.move_on_after(ANSWER_WAIT_S):
            await question.answered.wait()
        if question.answer is None:
            return types.ErrorData(code=types.INTERNAL_ERROR, message="the client never answered")
        return question.answer

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Deliver a log message on the latest host request of this call (if it opted in)."""
        await log_on_request(self.ctx, params)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Report progress on the latest host request of this call."""
        await self.ctx.session.report_progress(progress, total, message)

    async def drive(self, forward: Callable[[Responder], Awaitable[ResultT]]) -> None:
        """Run the forwarded call to its end (in the background)."""
        with self.scope:
            try:
                self._result = await forward(self)
            except Exception as exc:  # noqa: BLE001 - handed to whichever request collects it
                self._error = exc
        self._done = True
        await self._notify()

    def deliver(self, responses: types.InputResponses | None) -> None:
        """Hand the client's answers to the questions they belong to."""
        for key, response in (responses or {}).items():
            question = self._questions.get(key)
            if question is not None and not question.answered.is_set():
                question.answer = response
                question.answered.set()

    async def outcome(self) -> ResultT | types.InputRequiredResult:
        """Wait for the result, or for questions the client has not seen yet."""
        async with self._changed:
            while True:
                if self._done:
                    if self._error is not None:
                        raise self._error
                    assert self._result is not None  # noqa: S101 - set whenever no error
                    return self._result
                unsent = {k: q for k, q in self._questions.items() if not q.sent}
                if unsent:
                    for question in unsent.values():
                        question.sent = True
                    requests = {key: question.request for key, question in unsent.items()}
                    return types.InputRequiredResult(
                        input_requests=requests,
                        request_state=self.token,
                    )
                await self._changed.wait()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class PendingCalls:
    """The 2026-07-28 calls waiting for their client's answers, by `requestState`."""

    def __init__(self) -> None:
        """Start empty; `bind` a task group before use."""
        self._calls: dict[str, PendingCall[Any]] = {}
        self._task_group: anyio.abc.TaskGroup | None = None

    def bind(self, task_group: anyio.abc.TaskGroup) -> None:
        """Attach the task group that runs the calls."""
        self._task_group = task_group

    async def run(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.InputResponseRequestParams,
        forward: Callable[[Responder], Awaitable[ResultT]],
        *,
        tool: str | None = None,
    ) -> ResultT | types.InputRequiredResult:
        """Start (or resume, by `params.request_state`) a call; return its result or questions.

        Raises:
            MCPError: an unknown or expired `requestState`, or no gateway is running.

        """
        if self._task_group is None:
            raise MCPError(code=types.INTERNAL_ERROR, message="the gateway is not running")
        state = params.request_state
        if state is not None:
            call = self._calls.get(state)
            if call is None:
                raise MCPError(code=types.INVALID_PARAMS, message="unknown or expired requestState")
            call.ctx = ctx
            call.deliver(params.input_responses)
        else:
            call = PendingCall[ResultT](ctx, tool)
            self._calls[call.token] = call
            self._task_group.start_soon(self._drive, call, forward)
        try:
            result = await call.outcome()
        except BaseException:
            call.scope.cancel()  # the client gave up: so does the skill (notifications/cancelled)
            self._forget(call)
            raise
        if not isinstance(result, types.InputRequiredResult):
            self._forget(call)
        return result

    def _forget(self, call: PendingCall[Any]) -> None:
        self._calls.pop(call.token, None)
        call.claimed.set()

    async def _drive(
        self, call: PendingCall[Any], forward: Callable[[Responder], Awaitable[Any]]
    ) -> None:
        await call.drive(forward)
        with anyio.move_on_after(UNCLAIMED_S):
            await call.claimed.wait()
        self._calls.pop(call.token, None)
