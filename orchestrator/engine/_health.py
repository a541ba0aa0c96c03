"""The proxy's readiness and its output: a healthz poll, and its logs copied to the run's files.

The proxy writes its audit as JSON lines on stdout (copied to `audit.jsonl` as they come, so a
crashed run keeps its trail) and diagnostics on stderr (copied to `proxy.log`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Final

import anyio
import docker.errors

from perstack_sandbox import state
from perstack_sandbox.audit import PROXY_AUDIT_CAP_BYTES as AUDIT_CAP
from perstack_sandbox.audit import PROXY_LOG_CAP_BYTES as LOG_CAP
from perstack_sandbox.audit import open_capped
from perstack_sandbox.docker_edge import client, docker_errors
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from perstack_sandbox.state import RunState

READY_TIMEOUT_S: Final = 20.0  # Python start + import on a loaded 2-core host, with margin
POLL_INTERVAL_S: Final = 0.01  # a refused connect costs microseconds; readiness is ~100 ms
CONNECT_TIMEOUT_S: Final = 1.0
HEALTHZ_REQUEST: Final = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
LOG_TAIL_LINES: Final = 30
FRAME_HEADER: Final = 8
# The copier of each proxy's output, by container id: its stream ends when the proxy stops.
_followers: dict[str, threading.Thread] = {}


async def _is_healthy(host: str, port: int) -> bool:
    try:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(HEALTHZ_REQUEST)
                head = await stream.receive(64)
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


async def wait_ready(proxy_id: str, host: str, port: int) -> None:
    """Poll the proxy's `/healthz` from the host until it answers 200.

    Raises:
        EngineError: it did not answer in time (the proxy's last log lines are attached).

    """
    with anyio.move_on_after(READY_TIMEOUT_S):
        while not await _is_healthy(host, port):  # noqa: ASYNC110 - polling a remote socket
            await anyio.sleep(POLL_INTERVAL_S)
        return
    error = EngineError(f"the proxy did not become ready within {READY_TIMEOUT_S:.0f} s")
    with contextlib.suppress(EngineError):
        error.add_note(await anyio.to_thread.run_sync(_tail, proxy_id))
    raise error


def _tail(container_id: str) -> str:
    with docker_errors("reading the proxy's logs"):
        logs = client().api.logs(container_id, tail=LOG_TAIL_LINES)
    return f"proxy logs:\n{logs.decode(errors='replace')}"


def follow_logs(proxy_id: str, run: RunState) -> threading.Thread:
    """Copy the proxy's stdout to `audit.jsonl` and stderr to `proxy.log` until it is removed.

    A daemon thread, so a blocked read can never hold the process open.

    Raises:
        EngineError: the engine could not be reached.

    """
    with docker_errors("attaching to the proxy's output"):
        response = client().api.attach_socket(
            proxy_id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1}
        )
    sock = getattr(response, "_sock", response)
    thread = threading.Thread(
        target=_copy_frames, args=(sock, run), name=f"proxy-logs-{run.run_id}", daemon=True
    )
    thread.start()
    _followers[proxy_id] = thread
    return thread


def has_stopped(proxy_id: str) -> bool:
    """Tell whether the proxy's output stream has ended, i.e. the proxy container stopped."""
    follower = _followers.get(proxy_id)
    return follower is not None and not follower.is_alive()


def describe_stopped(proxy_id: str) -> str:
    """Say how the proxy ended (exit code, OOM kill, removal), for the gateway's report."""
    try:
        with docker_errors("inspecting the proxy"):
            status = client().api.inspect_container(proxy_id)["State"]
    except EngineError:
        return "its container is gone"
    how = f"its container {status.get('Status', 'stopped')} with code {status.get('ExitCode')}"
    return how + (" (killed for lack of memory)" if status.get("OOMKilled") else "")


def wait_stopped(container_id: str) -> None:
    """Block until the container stops or is removed: its attach stream (no output) ends.

    One idle socket per sandbox instead of a poll: the engine closes the stream the moment
    the container stops, whoever stopped it (`down`, a kill, the engine itself going away).

    Raises:
        EngineError: the engine could not be reached to attach.

    """
    with docker_errors("watching the sandbox container"):
        response = client().api.attach_socket(container_id, params={"stdout": 1, "stream": 1})
    sock = getattr(response, "_sock", response)
    with contextlib.suppress(OSError, ValueError):
        while sock.recv(4096):
            pass
    with contextlib.suppress(OSError):
        sock.close()


def describe_end(container_id: str) -> str:
    """Say how a container ended: removed, stopped with a code, or the engine is unreachable."""
    removed = "was removed (`perstack-sandbox down`, or another tool)"
    try:
        with docker_errors("inspecting the sandbox container"):
            status = client().api.inspect_container(container_id)["State"]
    except EngineError as exc:
        return (
            removed
            if isinstance(exc.__cause__, docker.errors.NotFound)
            else (f"cannot be inspected: {exc}")
        )
    if status.get("Status") in {"removing", "dead"}:  # caught in the middle of a removal
        return removed
    how = f"{status.get('Status', 'stopped')} with code {status.get('ExitCode')}"
    return how + (" (killed for lack of memory)" if status.get("OOMKilled") else "")


def _copy_frames(sock: object, run: RunState) -> None:
    # Capped: a skill decides how many requests (audit lines) the proxy writes (decision 76).
    audit_path, log_path = run.audit_path, run.proxy_log_path
    with (
        open_capped(audit_path, state.private_fd(audit_path, append=True), AUDIT_CAP) as audit,
        open_capped(log_path, state.private_fd(log_path, append=True), LOG_CAP) as log,
        contextlib.suppress(OSError, ValueError),
    ):
        buffer = b""
        while True:
            chunk = sock.recv(65536)  # type: ignore[attr-defined]
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= FRAME_HEADER:
                size = int.from_bytes(buffer[4:FRAME_HEADER], "big")
                if len(buffer) < FRAME_HEADER + size:
                    break
                target = log if buffer[0] == 2 else audit  # noqa: PLR2004 - 2 is stderr
                target.write(buffer[FRAME_HEADER : FRAME_HEADER + size])
                buffer = buffer[FRAME_HEADER + size :]
