"""The gate in front of the gateway's HTTP endpoint: a bearer token and an Origin check.

The endpoint listens on 127.0.0.1 only, but any local process and any web page the user opens
can reach loopback. So every request must carry `Authorization: Bearer <token>` (the scheme
in any case, as HTTP auth schemes are case-insensitive; the token compared in constant time),
and a request that carries an `Origin` header (browsers always send one on cross-site
requests) must come from the endpoint's own loopback origin. Anything else is
refused before the MCP layer sees it.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_BYTES: Final = 32


def new_token() -> str:
    """Return a fresh random bearer token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def loopback_origins(port: int) -> frozenset[str]:
    """Return the endpoint's own origins, the only ones a browser request may come from."""
    return frozenset({f"http://127.0.0.1:{port}", f"http://localhost:{port}"})


class BearerOriginGuard:
    """ASGI middleware: 401 without the right bearer token, 403 for a foreign Origin."""

    def __init__(self, app: ASGIApp, *, token: str, allowed_origins: Iterable[str]) -> None:
        """Wrap `app`; lifespan and other non-HTTP scopes pass through untouched."""
        self._app = app
        self._token = token.encode()
        self._origins = frozenset(origin.encode() for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it to the wrapped app."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        origin = headers.get(b"origin")
        if origin is not None and origin not in self._origins:
            await _refuse(send, 403, "forbidden origin", {})
            return
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            await _refuse(
                send, 401, "missing or wrong bearer token", {"www-authenticate": "Bearer"}
            )
            return
        await self._app(scope, receive, send)


async def _refuse(send: Send, status: int, why: str, extra: dict[str, str]) -> None:
    body = json.dumps({"error": why}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
