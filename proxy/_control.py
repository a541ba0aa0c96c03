"""The control channel: messages to a running proxy over a Unix socket inside its container.

Some settings must reach the proxy after it started: a warm sandbox's proxy starts with no
credential at all, and the run that claims it hands over fresh per-skill credentials then. Its
environment cannot carry them (the engine keeps a container's environment in its config on
disk), so the orchestrator runs ``python -m proxy.control`` in the container with ``docker exec
-i`` and writes the message on its standard input, which the engine never stores. The client
forwards that one JSON document to the socket (mode 0600, the proxy's own uid, on the
container's tmpfs) and prints the reply.

One message per connection: the client sends a JSON object and half-closes; the proxy answers
``{"ok": true}`` (plus what the operation returns) or ``{"ok": false, "error": "..."}`` and
closes. Operations are looked up in ``HANDLERS`` by ``"op"``:

- ``{"op": "grant", "skills": {"<skill>": {"token": "...", "allowedDomains": [...]}}}``
  replaces every earlier grant at once: from then on only these tokens reach anything, each
  held to its own skill's list (see ``_policy.parse_grant``).
- ``{"op": "seal", "skills": {"<skill>": {"<VAR>": {"placeholder": "...", "value": "..."}}}}``
  hands over the real values behind a sealed run's placeholders; the reply carries the
  per-run CA certificate (``caCertificate``), whose key never leaves the proxy (``_seal``).

The client exits 0 on ``ok``, 1 on a refusal, 2 when the socket does not answer (the proxy
has not bound it yet: the caller may try again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Final

from ._policy import PolicyError, parse_grant
from ._seal import SealError, seal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from ._server import ProxyServer

    Handler = Callable[[ProxyServer, dict[str, object]], dict[str, object] | None]

DEFAULT_SOCKET: Final = "/tmp/perstack-control.sock"  # noqa: S108 - the proxy's private tmpfs
MAX_MESSAGE_BYTES: Final = 1024 * 1024  # a grant of 32 skills is a few kilobytes
READ_TIMEOUT_S: Final = 10.0  # a client that does not finish its message in this time is gone
SOCKET_MODE: Final = 0o600
EXIT_UNREACHABLE: Final = 2  # the socket does not answer (yet): distinct from a refusal


class ControlError(ValueError):
    """A control message that cannot be carried out; its text is the reply's ``error``."""


def grant(server: ProxyServer, message: dict[str, object]) -> None:
    """Install the message's per-skill credentials, replacing any earlier grant atomically.

    Sessions read ``server.policy`` once per request, so each request sees either the old
    grant or the new one, never a mixture.

    Raises:
        ControlError: ``skills`` is missing or invalid (the earlier grant stays).

    """
    try:
        grants = parse_grant(message.get("skills"))
    except PolicyError as exc:
        raise ControlError(f"grant: {exc}") from exc
    server.policy = dataclasses.replace(server.policy, skills=grants, require_grant=True)
    sys.stderr.write(f"proxy: control: granted credentials to {len(grants)} skills\n")


def seal_values(server: ProxyServer, message: dict[str, object]) -> dict[str, object]:
    """Install a sealed run's real values; return the per-run CA certificate (PEM).

    Raises:
        ControlError: the message is invalid, or the run is sealed already.

    """
    try:
        pem = seal(server.seal, server.policy, message, server.policy.test_upstream_ca)
    except SealError as exc:
        raise ControlError(str(exc)) from exc
    return {"caCertificate": pem}


HANDLERS: Final[dict[str, Handler]] = {"grant": grant, "seal": seal_values}


def dispatch(
    server: ProxyServer, raw: bytes, handlers: Mapping[str, Handler] = HANDLERS
) -> dict[str, object]:
    """Decode one message, run its operation, and return the reply (never raises)."""
    try:
        message = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"the message is not JSON: {exc}"}
    if not isinstance(message, dict):
        return {"ok": False, "error": "the message must be a JSON object"}
    operation = message.get("op")
    handler = handlers.get(operation) if isinstance(operation, str) else None
    if handler is None:
        known = ", ".join(sorted(handlers))
        return {"ok": False, "error": f"unknown op {operation!r} (known: {known})"}
    try:
        extra = handler(server, message)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, **(extra or {})}


async def start_control(server: ProxyServer, path: Path) -> asyncio.Server:
    """Listen for control messages on the Unix socket ``path`` (mode 0600); return the server.

    Raises:
        OSError: the socket cannot be made.

    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(_read_all(reader), READ_TIMEOUT_S)
            reply = dispatch(server, raw) if raw is not None else _too_long()
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: nobody to answer
        finally:
            writer.close()

    _clear(path)
    old = os.umask(0o177)  # born 0600: never a moment when another uid could connect
    try:
        listening = await asyncio.start_unix_server(answer, path)
    finally:
        os.umask(old)
    path.chmod(SOCKET_MODE)  # noqa: ASYNC240 - one metadata call on a tmpfs, at start-up
    return listening


def _clear(path: Path) -> None:
    """Remove a socket left at ``path`` by an earlier process in the same tmpfs."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _read_all(reader: asyncio.StreamReader) -> bytes | None:
    """Read until the client half-closes; None once the message outgrows the limit."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_long() -> dict[str, object]:
    return {"ok": False, "error": f"the message is longer than {MAX_MESSAGE_BYTES} bytes"}


def send(path: str, message: bytes, timeout: float = READ_TIMEOUT_S) -> bytes:
    """Send one message to the control socket at ``path`` and return the raw reply.

    Raises:
        OSError: the socket cannot be reached, or the proxy did not answer in time.

    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def main(argv: Sequence[str] | None = None) -> int:
    """Forward standard input to the control socket; print the reply; 0 only on ``ok``.

    ``argv`` may name the socket (default ``DEFAULT_SOCKET``).

    Returns:
        The process exit status.

    """
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else DEFAULT_SOCKET
    message = sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)
    try:
        raw = send(path, message)
    except OSError as exc:
        sys.stdout.write(json.dumps({"ok": False, "error": f"control socket: {exc}"}) + "\n")
        return EXIT_UNREACHABLE
    sys.stdout.write(raw.decode("utf-8", "replace"))
    try:
        reply = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 1
    return 0 if isinstance(reply, dict) and reply.get("ok") is True else 1
