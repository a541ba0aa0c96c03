"""Warm sandboxes: started with no secret, handed their skills' credentials when claimed.

A warm sandbox is `start_sandbox(..., warm=True)`: network, proxy and sandbox container up, no
skill running, and a proxy that lets nothing through (its policy requires a grant and holds
none). The run that claims it calls `grant`: fresh per-skill tokens go to the proxy over its
control channel, a `docker exec -i` of the proxy's control client with the message on standard
input (the engine stores a container's environment in its config on disk, never an exec's
standard input), and only then do the skills start, each with its own token in its exec
environment (docs/architecture.md, decision 33).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import TYPE_CHECKING, Final

import anyio

from perstack_sandbox.engine._containers import PROXY_USER
from perstack_sandbox.engine._exec import start_exec
from perstack_sandbox.engine._sandbox import skill_grants
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from perstack_sandbox.engine._exec import ExecProcess
    from perstack_sandbox.engine._sandbox import Sandbox
    from perstack_sandbox.plan import SandboxPlan

CONTROL_ARGV: Final = ("python3", "-m", "proxy.control")
PROXY_WORKDIR: Final = "/opt/perstack-proxy"  # where the proxy image keeps its package
CONTROL_TIMEOUT_S: Final = 30.0  # one exec of a small Python client; a loaded engine is slow
REPLY_LIMIT_BYTES: Final = 65536


async def grant(
    sandbox: Sandbox, plan: SandboxPlan, *, control: ExecProcess | None = None
) -> Sandbox:
    """Give `sandbox`'s proxy fresh per-skill tokens for `plan`; return it with those tokens.

    The grant replaces any earlier one at once: a token handed out before stops working.
    `control` is a client started ahead by `open_control` (else one is started now).

    Raises:
        EngineError: the exec failed, or the proxy refused the grant (its reason is quoted).

    """
    credentials = {name: secrets.token_urlsafe(32) for name in skill_grants(plan)}
    await send_grant(sandbox.proxy_container_id, credentials, skill_grants(plan), control=control)
    return dataclasses.replace(sandbox, credentials=credentials)


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
    proxy_id: str, message: Mapping[str, object], *, control: ExecProcess | None = None
) -> dict[str, object]:
    """Send one control message to the proxy `proxy_id`; return its reply when it is `ok`.

    `control`: a client from `open_control` to use (and close); else one is started.

    Raises:
        EngineError: the exec failed or timed out, or the proxy answered `ok: false`.

    """
    try:
        with anyio.fail_after(CONTROL_TIMEOUT_S):
            process = control or await open_control(proxy_id)
            try:
                raw = await _converse(process, json.dumps(message).encode())
            finally:
                with anyio.CancelScope(shield=True):
                    await process.close()
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


async def _converse(process: ExecProcess, message: bytes) -> bytes:
    """Write `message` to the exec's stdin, close it, and read stdout to its end."""
    chunks: list[bytes] = []
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
        group.cancel_scope.cancel()
    return b"".join(chunks)
