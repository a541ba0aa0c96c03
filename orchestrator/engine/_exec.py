"""A `docker exec` as three anyio byte streams, over the attach socket of the exec.

Without a TTY the engine multiplexes stdout and stderr on one socket: each frame is an 8-byte
header (stream type, three zero bytes, big-endian payload length) followed by the payload. A pump
task splits frames into two memory streams. Closing stdin half-closes the socket, which the
engine turns into EOF on the process's standard input.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import docker.errors
import requests.exceptions

from perstack_sandbox.docker_edge import client, docker_errors

if TYPE_CHECKING:
    import socket

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

HEADER_BYTES: Final = 8
STDOUT_BUFFER_CHUNKS: Final = 256  # backpressure: a consumer that stops reading stalls the skill
READ_CHUNK_BYTES: Final = 65536
WAIT_POLL_MIN_S: Final = 0.01  # exec_inspect is cheap; poll fast first, then back off
WAIT_POLL_MAX_S: Final = 0.2
KILL_TIMEOUT_S: Final = 10.0  # the kill exec itself; an engine slower than this is broken


class ChunkReceiveStream(anyio.abc.ByteReceiveStream):
    """A byte stream over a memory stream of chunks (one direction of the demultiplexer)."""

    def __init__(self, chunks: MemoryObjectReceiveStream[bytes]) -> None:
        """Wrap the receiving end of a memory stream of byte chunks."""
        self._chunks = chunks
        self._pending = b""

    async def receive(self, max_bytes: int = READ_CHUNK_BYTES) -> bytes:
        """Return the next bytes; raise `anyio.EndOfStream` once the process closed the stream."""
        if not self._pending:
            self._pending = await self._chunks.receive()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def aclose(self) -> None:
        """Stop receiving; later output for this stream is dropped."""
        await self._chunks.aclose()


class StdinStream(anyio.abc.ByteSendStream):
    """The process's standard input; closing it sends EOF (a half-close of the socket)."""

    def __init__(self, sock: anyio.abc.SocketStream) -> None:
        """Write to the exec's attach socket."""
        self._sock = sock
        self._closed = False

    async def send(self, item: bytes) -> None:
        """Write bytes to the process's standard input."""
        if self._closed:
            raise anyio.ClosedResourceError
        await self._sock.send(item)

    async def aclose(self) -> None:
        """Send EOF to the process (idempotent)."""
        if self._closed:
            return
        self._closed = True
        # The process may be gone already; then there is nobody to tell.
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._sock.send_eof()


@dataclass(eq=False)
class ExecProcess:
    """One process started by `docker exec`, with its standard streams."""

    exec_id: str
    container_id: str
    user: int
    stdin: anyio.abc.ByteSendStream
    stdout: anyio.abc.ByteReceiveStream
    stderr: anyio.abc.ByteReceiveStream
    _sock: anyio.abc.SocketStream
    _out: MemoryObjectSendStream[bytes]
    _err: MemoryObjectSendStream[bytes]
    _keepalive: object = None
    _exit_code: int | None = field(default=None, init=False)
    _exited: bool = field(default=False, init=False)

    async def wait(self) -> int | None:
        """Wait for the process to exit and return its exit code (None if the engine lost it).

        Raises:
            EngineError: the engine could not be reached.

        """
        delay = WAIT_POLL_MIN_S
        while not self._exited:
            info = await anyio.to_thread.run_sync(self._inspect)
            if not info.get("Running"):
                code = info.get("ExitCode")
                self._exit_code = code if isinstance(code, int) else None
                self._exited = True
                break
            await anyio.sleep(delay)
            delay = min(delay * 2, WAIT_POLL_MAX_S)
        return self._exit_code

    def _inspect(self) -> dict[str, Any]:
        with docker_errors("inspecting a skill process"):
            return dict(client().api.exec_inspect(self.exec_id))

    async def kill(self) -> None:
        """Kill the process and everything it started (every process of its uid).

        Each skill has its own uid, so `kill -KILL -1` run as that uid reaches exactly that
        skill's process tree and nothing else (the caller itself is spared by the kernel).

        Raises:
            EngineError: the engine could not be reached.

        """
        if self._exited:
            return
        with anyio.fail_after(KILL_TIMEOUT_S):
            await anyio.to_thread.run_sync(self._kill_all_of_uid)
            await self.wait()

    def _kill_all_of_uid(self) -> None:
        api = client().api
        with docker_errors("killing a skill process"):
            killer = api.exec_create(
                self.container_id, ["sh", "-c", "kill -KILL -1"], user=str(self.user)
            )
            api.exec_start(killer["Id"])

    async def pump(self) -> None:
        """Split the attach socket's frames into stdout and stderr until the process ends."""
        buffer = b""
        try:
            while True:
                try:
                    buffer += await self._sock.receive(READ_CHUNK_BYTES)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                buffer = await self._dispatch(buffer)
        finally:
            self._out.close()
            self._err.close()

    async def _dispatch(self, buffer: bytes) -> bytes:
        while len(buffer) >= HEADER_BYTES:
            size = int.from_bytes(buffer[4:HEADER_BYTES], "big")
            if len(buffer) < HEADER_BYTES + size:
                break
            kind, payload = buffer[0], buffer[HEADER_BYTES : HEADER_BYTES + size]
            buffer = buffer[HEADER_BYTES + size :]
            target = self._err if kind == 2 else self._out  # noqa: PLR2004 - 2 is stderr
            # A consumer that closed its stream drops that output; the other stream goes on.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await target.send(payload)
        return buffer

    async def end_with_container(self) -> None:
        """End this process's streams once its container stops (run it as a task).

        runsc does not end a `docker exec` stream when its sandbox dies (gVisor's kernel
        OOM-killed by the host, for one): without this, a call to that skill would hang until
        its deadline. The process then counts as exited with the container's status.
        """
        # A thread of its own for as long as the container runs: never one of the shared pool.
        code = await anyio.to_thread.run_sync(
            _wait_container, self.container_id, abandon_on_cancel=True, limiter=_own_thread()
        )
        self._exit_code, self._exited = code, True
        await self._sock.aclose()

    async def close(self, *, kill: bool = True) -> None:
        """Kill the process if it still runs (unless `kill` is false) and close the socket.

        `kill=False` is for an exec that shares its uid with the container's own processes
        (the proxy, the sandbox user): `kill -1` as that uid would take them down too.
        """
        try:
            if kill and not self._exited:
                info = await anyio.to_thread.run_sync(self._inspect)
                if info.get("Running"):
                    await self.kill()
        finally:
            await self._sock.aclose()


def _own_thread() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(1)


def _wait_container(container_id: str) -> int | None:
    """Block until the container stops; return its exit status (None when it is gone)."""
    try:
        result = client().api.wait(container_id, timeout=None)  # None: no deadline at all
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        return None  # removed, or the engine went away: both mean "stopped" here
    code = result.get("StatusCode") if isinstance(result, dict) else None
    return code if isinstance(code, int) else None


async def start_exec(
    container_id: str,
    argv: list[str],
    *,
    env: dict[str, str],
    user: int,
    workdir: str,
) -> ExecProcess:
    """Create and start an exec with stdin, stdout and stderr attached.

    Raises:
        EngineError: the engine refused the exec or could not be reached.

    """
    exec_id, raw, keepalive = await anyio.to_thread.run_sync(
        _create_and_attach, container_id, argv, env, user, workdir
    )
    sock = await anyio.abc.SocketStream.from_socket(raw)
    out_send, out_receive = anyio.create_memory_object_stream[bytes](STDOUT_BUFFER_CHUNKS)
    # stderr is unbounded so that a consumer reading only stdout can never deadlock the pump.
    err_send, err_receive = anyio.create_memory_object_stream[bytes](math.inf)
    return ExecProcess(
        exec_id=exec_id,
        container_id=container_id,
        user=user,
        stdin=StdinStream(sock),
        stdout=ChunkReceiveStream(out_receive),
        stderr=ChunkReceiveStream(err_receive),
        _sock=sock,
        _out=out_send,
        _err=err_send,
        _keepalive=keepalive,
    )


def _create_and_attach(
    container_id: str, argv: list[str], env: dict[str, str], user: int, workdir: str
) -> tuple[str, socket.socket, object]:
    # docker-py hands back the hijacked connection's SocketIO; its `_sock` is the socket.
    api = client().api
    with docker_errors("starting a skill process"):
        created = api.exec_create(
            container_id,
            argv,
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            environment=env,
            user=str(user),
            workdir=workdir,
        )
        exec_id = str(created["Id"])
        attached = api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(attached, "_sock", None) or attached  # type: ignore[assignment]
    # The response object owns the socket's file object: keep it alive with the stream.
    return exec_id, raw, attached
