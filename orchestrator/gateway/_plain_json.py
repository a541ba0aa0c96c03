"""Plain JSON answers where a stream is not needed (streamable HTTP, handshake era).

The SDK's handshake-era transport answers every POST either always with an SSE stream or always
with JSON. A stream is needed only when something precedes the response: progress, a log
message, a question to the client. Clients cap the size of one SSE event (the Python SDK at
1 MiB), so an always-SSE answer breaks large results. This middleware holds a POST's SSE answer
until its first event: if that event is the JSON-RPC response itself, it is sent as a plain
`application/json` body instead; anything else (a notification, a request, a keepalive) commits
the stream as it is. The 2026-07-28 path of the SDK already decides the same way on its own.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DROPPED_HEADERS: Final = frozenset(
    {b"content-type", b"content-length", b"cache-control", b"connection"}
)


class PlainJsonResponses:
    """ASGI middleware: a POST whose SSE stream would carry only its response gets plain JSON."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`; only POST responses of type `text/event-stream` are looked at."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, rewriting its answer when it is a one-event stream."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self._app(scope, receive, send)
            return
        await self._app(scope, receive, _Answer(send).send)


class _Answer:
    """The answer to one POST, held while it is undecided."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._state = "start"  # start -> held -> streaming | answered
        self._start: Message | None = None
        self._buffer = bytearray()

    async def send(self, message: Message) -> None:
        if self._state == "answered":
            return  # the rest of a stream whose response already went out as JSON
        if self._state == "streaming":
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            if _is_event_stream(message):
                self._start, self._state = message, "held"
                return
            self._state = "streaming"
            await self._send(message)
            return
        if message["type"] != "http.response.body" or self._state != "held":
            await self._send(message)
            return
        self._buffer += message.get("body", b"")
        await self._decide(more=bool(message.get("more_body")))

    async def _decide(self, *, more: bool) -> None:
        end = _EVENT_END.search(self._buffer)
        if end is None and more:
            return  # the first event is not complete yet
        data = _event_data(bytes(self._buffer[: end.start()])) if end is not None else None
        if data is not None and _is_response(data):
            await self._answer_json(data)
            return
        await self._commit_stream(more=more)

    async def _answer_json(self, body: bytes) -> None:
        assert self._start is not None  # noqa: S101 - held before any body
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() not in _DROPPED_HEADERS]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        self._state = "answered"
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _commit_stream(self, *, more: bool) -> None:
        assert self._start is not None  # noqa: S101 - held before any body
        self._state = "streaming"
        await self._send(self._start)
        body = {"type": "http.response.body", "body": bytes(self._buffer), "more_body": more}
        self._buffer.clear()
        await self._send(body)


def _is_event_stream(start: Message) -> bool:
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == b"text/event-stream"
    return False


def _event_data(event: bytes) -> bytes | None:
    """Return the data of one SSE event (its `data:` lines joined); None if it has none."""
    lines = [line for line in re.split(rb"\r\n|\n|\r", event) if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].removeprefix(b" ") for line in lines)


def _is_response(data: bytes) -> bool:
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return (
        isinstance(message, dict)
        and "id" in message
        and ("result" in message or "error" in message)
    )
