"""A skill's stdio over the Kubernetes exec API (a websocket, `v4.channel.k8s.io`).

Each message is one channel byte and a payload: 0 stdin, 1 stdout, 2 stderr, 3 the exit
status (a `Status` object). The exec API runs a command as its container's user and cannot set
environment variables, so a skill's container is its own (its uid), and its environment
travels first on its stdin as one JSON line that a tiny reader consumes byte by byte before it
`execve`s the launcher with exactly that environment (decision 43): the values are in no pod
spec, no Secret and no command line. v4 cannot half-close stdin; a skill ends by a kill.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import anyio
import anyio.abc
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.stream import WsApiClient

from perstack_sandbox.errors import EngineError
from perstack_sandbox.kube._client import kube_errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from kubernetes_asyncio.client import Configuration

STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
OUTPUT_BUFFER_CHUNKS: Final = 256  # backpressure: a consumer that stops reading stalls the skill
KILL_TIMEOUT_S: Final = 10.0  # the kill exec itself; a cluster slower than this is broken
LAUNCHER: Final = "/usr/local/bin/perstack-launch"
# Reads one line from fd 0 a byte at a time (a buffered read would swallow MCP messages that
# follow), then replaces itself with the launcher, holding exactly the decoded environment.
ENV_READER: Final = (
    "import json,os,sys\n"
    "line=bytearray()\n"
    "while (b:=os.read(0,1)) not in (b'',b'\\n'): line+=b\n"
    "os.execve(sys.argv[1],sys.argv[1:],json.loads(line))\n"
)


def exec_argv(argv: Sequence[str]) -> list[str]:
    """Return the exec command that starts `argv` once its environment has arrived on stdin."""
    return ["python3", "-I", "-c", ENV_READER, LAUNCHER, *argv]


def env_line(env: Mapping[str, str]) -> bytes:
    """Return `env` as the one line the reader expects (JSON escapes every newline)."""
    return json.dumps(dict(env), sort_keys=True).encode() + b"\n"


class _Output(anyio.abc.ByteReceiveStream):
    """One output channel of the exec, as a byte stream."""

    def __init__(self, chunks: MemoryObjectReceiveStream[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            self._pending = await self._chunks.receive()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def aclose(self) -> None:
        await self._chunks.aclose()


class _Input(anyio.abc.ByteSendStream):
    """The exec's stdin channel; closing it only stops sending (v4 has no half-close)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._closed = False

    async def send(self, item: bytes) -> None:
        if self._closed or self._ws.closed:
            raise anyio.ClosedResourceError
        try:
            await self._ws.send_bytes(bytes([STDIN]) + item)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        self._closed = True


@dataclass(eq=False)
class KubeExecProcess:
    """One process started through the exec API, with its standard streams."""

    pod: str
    namespace: str
    container: str
    configuration: Configuration
    stdin: anyio.abc.ByteSendStream
    stdout: anyio.abc.ByteReceiveStream
    stderr: anyio.abc.ByteReceiveStream
    _ws: aiohttp.ClientWebSocketResponse
    _out: MemoryObjectSendStream[bytes]
    _err: MemoryObjectSendStream[bytes]
    _done: anyio.Event = field(default_factory=anyio.Event)
    _exit_code: int | None = None

    async def pump(self) -> None:
        """Split the websocket's messages into stdout, stderr and the exit status."""
        async with self._out, self._err:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                channel, payload = message.data[0], message.data[1:]
                if channel == STATUS and payload:
                    self._exit_code = exit_code(json.loads(payload))
                elif channel in (STDOUT, STDERR) and payload:
                    sink = self._out if channel == STDOUT else self._err
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await sink.send(payload)
        self._done.set()

    async def wait(self) -> int | None:
        """Wait until the exec's stream ends; return the exit code (None if none came)."""
        await self._done.wait()
        return self._exit_code

    async def kill(self) -> None:
        """Kill every process of the skill's uid in its container (not its idle init).

        Raises:
            EngineError: the cluster refused the kill exec or could not be reached.

        """
        if self._done.is_set():
            return
        with anyio.fail_after(KILL_TIMEOUT_S), kube_errors("killing a skill process"):
            async with WsApiClient(self.configuration) as ws_api:
                core: Any = CoreV1Api(ws_api)  # the stubs say `command: str`; a list is sent
                await core.connect_get_namespaced_pod_exec(
                    self.pod,
                    self.namespace,
                    container=self.container,
                    command=["sh", "-c", "kill -KILL -1"],
                    stdin=False,
                    stdout=True,
                    stderr=True,
                    tty=False,
                )
        await self._ws.close()


def exit_code(status: Mapping[str, Any]) -> int | None:
    """Return the exit code a `Status` on the error channel reports (None: not an exit)."""
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            with contextlib.suppress(TypeError, ValueError):
                return int(cause.get("message"))
    return None


@contextlib.asynccontextmanager
async def open_exec(  # noqa: PLR0913 - where to run, what, and with which environment
    configuration: Configuration,
    *,
    pod: str,
    namespace: str,
    container: str,
    argv: Sequence[str],
    env: Mapping[str, str],
) -> AsyncIterator[KubeExecProcess]:
    """Start `argv` in `container` with exactly `env` (sent on stdin first); kill it on exit.

    Raises:
        EngineError: the cluster refused the exec or could not be reached.

    """
    async with WsApiClient(configuration) as ws_api:
        # Typed as Any: with `_preload_content=False` the client returns the websocket's
        # context manager, which its stubs do not say (nor that `command` may be a list).
        core: Any = CoreV1Api(ws_api)
        with kube_errors(f"starting a skill in {pod}/{container}"):
            connecting = await core.connect_get_namespaced_pod_exec(
                pod,
                namespace,
                container=container,
                command=exec_argv(argv),
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
            )
            ws = await connecting.__aenter__()
        try:
            out_send, out_receive = anyio.create_memory_object_stream[bytes](OUTPUT_BUFFER_CHUNKS)
            err_send, err_receive = anyio.create_memory_object_stream[bytes](OUTPUT_BUFFER_CHUNKS)
            process = KubeExecProcess(
                pod,
                namespace,
                container,
                configuration,
                _Input(ws),
                _Output(out_receive),
                _Output(err_receive),
                ws,
                out_send,
                err_send,
            )
            await process.stdin.send(env_line(env))
            async with anyio.create_task_group() as group:
                group.start_soon(process.pump)
                try:
                    yield process
                finally:
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(KILL_TIMEOUT_S),
                        contextlib.suppress(EngineError, TimeoutError),  # no cluster, no skill
                    ):
                        await process.kill()
                    group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await connecting.__aexit__(None, None, None)
