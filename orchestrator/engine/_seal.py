"""Sealing a started sandbox: the values to its proxy, the run's CA into its containers.

The values go over the proxy's control channel (`_control`: the message on a control client's
stdin, never argv, never an environment). The proxy answers with its new CA's certificate,
which is then appended to the system bundle in each sandbox container, in a folder the skills
cannot write, before any skill starts (docs/architecture.md, decisions 37 and 38).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio

from perstack_sandbox.engine._containers import SKILL_UID_FIRST
from perstack_sandbox.engine._control import send_control
from perstack_sandbox.engine._exec import start_exec
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from perstack_sandbox.engine._exec import ExecProcess
    from perstack_sandbox.plan import SealedSecrets

SEALED_CA_DIR: Final = "/tmp/perstack-ca"  # noqa: S108 - made by the sandbox user, not writable by skills
SEALED_CA_BUNDLE: Final = f"{SEALED_CA_DIR}/bundle.pem"
SYSTEM_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"
SANDBOX_UID: Final = SKILL_UID_FIRST - 1
EXEC_TIMEOUT_S: Final = 30.0  # one exec on a busy engine
# mkdir fails if a folder is there already: nobody may have made it before us.
_INSTALL: Final = (
    f"set -eu; umask 022; mkdir {SEALED_CA_DIR}; "
    f'{{ cat {SYSTEM_BUNDLE}; printf "%s\\n" "$PERSTACK_RUN_CA"; }} > {SEALED_CA_BUNDLE}; '
    f"chmod 0444 {SEALED_CA_BUNDLE}; chmod 0555 {SEALED_CA_DIR}"
)


async def seal_proxy(proxy_id: str, message: bytes) -> str:
    """Send the seal message to the proxy; return the run CA's certificate (PEM).

    Raises:
        EngineError: the exec failed, or the proxy refused the message (its reason names
            keys, never values).

    """
    try:
        reply = await send_control(proxy_id, message)
    except EngineError as exc:
        raise EngineError(f"the proxy refused to seal the run: {exc}") from exc
    pem = reply.get("caCertificate")
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise EngineError("the proxy's seal reply carried no CA certificate")
    return pem


async def install_ca(container_ids: Sequence[str], pem: str) -> None:
    """Write the system bundle plus the run's CA to `SEALED_CA_BUNDLE` in every container.

    Raises:
        EngineError: an exec failed.

    """
    for container in container_ids:
        code, _, err = await _run(
            container, ["sh", "-c", _INSTALL], b"", {"PERSTACK_RUN_CA": pem}, (SANDBOX_UID, "/")
        )
        if code != 0:
            raise EngineError(f"cannot install the run's CA in {container[:12]}: {err.strip()}")


async def _run(
    container: str, argv: list[str], stdin: bytes, env: dict[str, str], who: tuple[int, str]
) -> tuple[int | None, str, str]:
    """Run one exec (as uid, in folder `who`) to its end with `stdin`; return status and output."""
    user, workdir = who
    with anyio.fail_after(EXEC_TIMEOUT_S):
        process = await start_exec(container, argv, env=env, user=user, workdir=workdir)
        async with anyio.create_task_group() as group:
            group.start_soon(process.pump)
            try:
                await process.stdin.send(stdin)
                await process.stdin.aclose()
                out, err = await _drain(process)
                code = await process.wait()
            finally:
                await process.close(kill=False)
                group.cancel_scope.cancel()
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


async def _drain(process: ExecProcess) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()

    async def read(stream: anyio.abc.ByteReceiveStream, into: bytearray) -> None:
        try:
            while True:
                into.extend(await stream.receive())
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return

    async with anyio.create_task_group() as group:
        group.start_soon(read, process.stdout, out)
        group.start_soon(read, process.stderr, err)
    return bytes(out), bytes(err)


async def seal_sandbox(proxy_id: str, container_ids: Sequence[str], sealed: SealedSecrets) -> str:
    """Hand the proxy the real values, install the run's CA; return the bundle skills trust.

    Raises:
        EngineError: the proxy refused the seal or the CA could not be installed.

    """
    pem = await seal_proxy(proxy_id, sealed.message())
    await install_ca(container_ids, pem)
    return SEALED_CA_BUNDLE
