"""The control channel: one JSON request per connection on a Unix socket inside the container.

The orchestrator reaches it with ``docker exec -i <proxy> python3 -m
perstack_sandbox_proxy.control`` (proxy/control.py), writing one JSON document to its stdin;
nothing is in the container's configuration or environment (which the engine persists on
disk). The socket lives on the proxy's private tmpfs, mode 0600, owned by the proxy's uid.
Every request is ``{"op": ...}``; every reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. Operations register a handler (``HANDLERS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._seal import SealError, seal

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._server import ProxyServer

DEFAULT_SOCKET: Final = "/tmp/perstack-proxy-control.sock"  # noqa: S108 - the proxy's tmpfs
# A seal message with hundreds of variables is far below this.
MAX_REQUEST_BYTES: Final = 1024 * 1024
REQUEST_TIMEOUT: Final = 10.0

Handler = "Callable[[ProxyServer, dict[str, object]], dict[str, object]]"


class ControlError(ValueError):
    """A control request that cannot be carried out (the message is safe to send back)."""


def _seal(server: ProxyServer, document: dict[str, object]) -> dict[str, object]:
    test_ca = server.policy.test_upstream_ca
    try:
        pem = seal(server.seal, server.policy, document, test_ca)
    except SealError as exc:
        raise ControlError(str(exc)) from exc
    return {"caCertificate": pem}


HANDLERS: Final[dict[str, Callable[[ProxyServer, dict[str, object]], dict[str, object]]]] = {
    "seal": _seal,
}


def answer(server: ProxyServer, raw: bytes) -> dict[str, object]:
    """Decode one request and run its handler; never raises (errors become the reply)."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"ok": False, "error": "the request is not JSON"}
    if not isinstance(document, dict) or document.get("op") not in HANDLERS:
        return {"ok": False, "error": f"unknown op; known: {sorted(HANDLERS)}"}
    try:
        return {"ok": True, **HANDLERS[str(document["op"])](server, document)}
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}


async def serve_control(server: ProxyServer, path: str) -> asyncio.Server:
    """Listen on the Unix socket ``path`` (mode 0600).

    Raises:
        OSError: the socket cannot be bound.

    """
    _remove_stale(path)
    old = os.umask(0o177)  # the socket is 0600 from birth: no window with wider modes
    try:
        listener = await asyncio.start_unix_server(
            lambda r, w: _handle(server, r, w), path, limit=MAX_REQUEST_BYTES
        )
    finally:
        os.umask(old)
    return listener


def _remove_stale(path: str) -> None:
    """Remove a socket left by an earlier proxy in this tmpfs (a restart), if any."""
    Path(path).unlink(missing_ok=True)


async def _handle(
    server: ProxyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            raw = await reader.read(MAX_REQUEST_BYTES + 1)
            while len(raw) <= MAX_REQUEST_BYTES and (more := await reader.read(65536)):
                raw += more
        reply = (
            {"ok": False, "error": "the request is too large"}
            if len(raw) > MAX_REQUEST_BYTES
            else answer(server, raw)
        )
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
    except (OSError, TimeoutError) as exc:
        sys.stderr.write(f"proxy: control request failed: {exc!r}\n")
    finally:
        writer.close()
