"""The proxy's control channel, from the host: one control client per message.

A message is a `docker exec -i` of the proxy's control client in the proxy container, with the
JSON message on its standard input (never argv, never an environment: the engine keeps a
container's configuration on disk, and never an exec's standard input). The client forwards it
to the proxy's control socket and prints the reply. Grants of per-skill credentials (every
run: decision 51) and sealed values (decision 37) go this way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import anyio

from perstack_sandbox.engine._exec import start_exec
from perstack_sandbox.engine._proxybox import PROXY_USER
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from perstack_sandbox.engine._exec import ExecProcess

CONTROL_ARGV: Final = ("python3", "-m", "perstack_sandbox_proxy.control")
PROXY_WORKDIR: Final = "/opt/perstack-proxy"  # where the proxy image keeps its package
CONTROL_TIMEOUT_S: Final = 30.0  # one exec of a small Python client; a loaded engine is slow
REPLY_LIMIT_BYTES: Final = 1024 * 1024  # a seal's reply carries a certificate; a grant's, less
# The proxy binds its control socket right after its listener: a message this early may beat it.
CONTROL_ATTEMPTS: Final = 20
CONTROL_RETRY_S: Final = 0.1
_UNREACHABLE: Final = 2  # the control client's exit status when the socket does not answer


async def open_control(proxy_id: str) -> ExecProcess:
    """Start the proxy's control client ahead of time; it waits for its message on stdin.

    A warm sandbox keeps one, so that its claim pays neither the exec nor the interpreter's
    start; it holds nothing until the message is written. Give it to `send_control` once.

    Raises:
        EngineError: the engine refused the exec or could not be reached.

    """
    uid = int(PROXY_USER.split(":", maxsplit=1)[0])
    return await start_exec(proxy_id, list(CONTROL_ARGV), env={}, user=uid, workdir=PROXY_WORKDIR)


async def send_control(
    proxy_id: str, message: Mapping[str, object] | bytes, *, control: ExecProcess | None = None
) -> dict[str, object]:
    """Send one control message to the proxy `proxy_id`; return its reply when it is `ok`.

    `message`: the document, or its JSON text (a seal's, so its values are encoded once).
    `control`: a client from `open_control` to use (and close) first; else one is started.
    While the proxy's socket does not answer yet, a new client tries again.

    Raises:
        EngineError: the exec failed or timed out, or the proxy answered `ok: false`.

    """
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    code, raw = None, b""
    try:
        with anyio.fail_after(CONTROL_TIMEOUT_S):
            for _ in range(CONTROL_ATTEMPTS):
                code, raw = await _converse(control or await open_control(proxy_id), body)
                control = None  # a client carries one message
                if code != _UNREACHABLE:
                    break
                await anyio.sleep(CONTROL_RETRY_S)
    except TimeoutError as exc:
        raise EngineError(f"the proxy {proxy_id[:12]} did not answer a control message") from exc
    try:
        reply = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        reply = None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        error = (
            reply.get("error") if isinstance(reply, dict) else raw[:200].decode(errors="replace")
        )
        raise EngineError(f"the proxy {proxy_id[:12]} refused a control message: {error}")
    return reply


async def send_grant(
    proxy_id: str,
    credentials: Mapping[str, str],
    domains: Mapping[str, list[str]],
    *,
    control: ExecProcess | None = None,
) -> None:
    """Install `credentials` (skill -> token), each held to its `domains` list, in the proxy.

    Raises:
        EngineError: see `send_control`.

    """
    skills = {
        name: {"token": token, "allowedDomains": list(domains.get(name, []))}
        for name, token in credentials.items()
    }
    await send_control(proxy_id, {"op": "grant", "skills": skills}, control=control)


async def grant_when_answering(
    proxy_id: str,
    answers: anyio.Event,
    credentials: Mapping[str, str],
    domains: Mapping[str, list[str]],
) -> None:
    """Start a control client now; once `answers` is set, send the grant through it.

    The client's exec and interpreter start overlap the proxy's own (decision 51).

    Raises:
        EngineError: see `send_control`.

    """
    control = await open_control(proxy_id)
    try:
        await answers.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await control.close(kill=False)  # never `kill -1` as the proxy's uid
        raise
    await send_grant(proxy_id, credentials, domains, control=control)


async def _converse(process: ExecProcess, message: bytes) -> tuple[int | None, bytes]:
    """Write `message` to the client's stdin, close it, read stdout to its end; and its exit."""
    chunks: list[bytes] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(process.pump)
            await process.stdin.send(message)
            await process.stdin.aclose()
            size = 0
            while size <= REPLY_LIMIT_BYTES:
                try:
                    chunk = await process.stdout.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                chunks.append(chunk)
                size += len(chunk)
            code = await process.wait()
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            # Never a kill: it would be `kill -1` as the proxy's uid, the proxy included.
            await process.close(kill=False)
    return code, b"".join(chunks)
