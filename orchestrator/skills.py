"""One MCP client session per skill, over a process's stdio byte streams.

The core is independent of Docker: a `ProcessFactory` opens something with `stdin`, `stdout`
and `stderr` byte streams (a `docker exec` attached through the engine, or a local subprocess in
tests), and `SkillSession` speaks MCP over it with the SDK's `ClientSession`.

Lifecycle of one skill:
- it starts with the sandbox unless `lazy_init`, in which case it starts on first use;
- stdout carries newline-delimited JSON-RPC; stderr goes to the run's log, and its last lines
  are kept for error messages;
- if it dies, the call in flight fails with its exit code and last stderr lines, and the NEXT
  call restarts it, once; a second death is final;
- every request carries the config's `timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections import deque
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from orchestrator.errors import SkillError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger("orchestrator.skills.stderr")

STARTUP_TIMEOUT_S: Final = 60.0  # first start of a Node/Python server on 2 busy cores
SHUTDOWN_GRACE_S: Final = 2.0  # MCP spec shutdown: close stdin, wait this long, then kill
DRAIN_TIMEOUT_S: Final = 1.0  # time for a dead skill's last stderr bytes to arrive
DEATH_REPORT_WAIT_S: Final = 5.0  # a failed call waits this long for the death report
STDERR_TAIL_LINES: Final = 20
MAX_LINE_BYTES: Final = 64 * 1024 * 1024  # one JSON-RPC message; beyond this the skill is broken
RESTARTS: Final = 1
CLIENT_INFO: Final = types.Implementation(name="perstack-sandbox", version="0.1.0")


class SkillProcess(Protocol):
    """A running skill process: three byte streams, a wait and a kill."""

    @property
    def stdin(self) -> anyio.abc.ByteSendStream:
        """The process's standard input."""

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        """The process's standard output (JSON-RPC, one message per line)."""

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream:
        """The process's standard error (free text for the log)."""

    async def wait(self) -> int | None:
        """Wait for the exit and return the code, when known."""

    async def kill(self) -> None:
        """Kill the process."""


ProcessFactory: TypeAlias = "Callable[[], AbstractAsyncContextManager[SkillProcess]]"
"""Opens one skill process; entered once per (re)start."""


@dataclass(frozen=True, slots=True)
class SkillSpec:
    """What the gateway needs to know about one stdio skill."""

    name: str
    pick: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()
    lazy_init: bool = False
    timeout_s: float = 60.0


class _LocalProcess:
    """`SkillProcess` over an `anyio` subprocess (tests, benchmarks)."""

    def __init__(self, process: anyio.abc.Process) -> None:
        # spawned with pipes, so all three exist
        assert process.stdin is not None  # noqa: S101
        assert process.stdout is not None  # noqa: S101
        assert process.stderr is not None  # noqa: S101
        self.stdin: anyio.abc.ByteSendStream = process.stdin
        self.stdout: anyio.abc.ByteReceiveStream = process.stdout
        self.stderr: anyio.abc.ByteReceiveStream = process.stderr
        self._process = process

    async def wait(self) -> int | None:
        return await self._process.wait()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()


@asynccontextmanager
async def local_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None
) -> AsyncIterator[SkillProcess]:
    """Start a local subprocess as a skill process; killed and reaped on exit.

    Raises:
        SkillError: the command cannot be started.

    """
    try:
        process = await anyio.open_process(
            list(argv), env=dict(env), cwd=cwd, start_new_session=True
        )
    except OSError as exc:
        raise SkillError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    try:
        yield _LocalProcess(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.aclose()


def filter_tools(
    tools: Sequence[types.Tool], pick: Sequence[str], omit: Sequence[str]
) -> list[types.Tool]:
    """Apply pick (keep only these, when given) then omit (drop these)."""
    kept = [tool for tool in tools if not pick or tool.name in pick]
    return [tool for tool in kept if tool.name not in omit]


class SkillSession:
    """An MCP client session with one skill process; starts, restarts once, stops."""

    def __init__(
        self,
        spec: SkillSpec,
        factory: ProcessFactory,
        *,
        on_stderr: Callable[[str, str], None] | None = None,
    ) -> None:
        """Prepare (not start) the session; `on_stderr(skill, line)` receives stderr lines."""
        self.spec = spec
        self._factory = factory
        self._on_stderr = on_stderr or _log_stderr
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._session: ClientSession | None = None
        self._tools: list[types.Tool] = []
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._lost = anyio.Event()
        self._handshaken = False
        self._lock = anyio.Lock()
        self._starts = 0
        self._death: str | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def name(self) -> str:
        """The skill key from perstack.toml."""
        return self.spec.name

    @property
    def is_running(self) -> bool:
        """Whether a live, initialised session exists right now."""
        return self._session is not None

    def bind(self, task_group: anyio.abc.TaskGroup) -> None:
        """Attach the task group that will own this skill's background task."""
        self._task_group = task_group

    async def ensure_started(self) -> ClientSession:
        """Return the live session, starting (or restarting once) the skill if needed.

        Raises:
            SkillError: the skill cannot start, or died after its one restart.

        """
        async with self._lock:
            if self._session is not None:
                return self._session
            if self._starts > RESTARTS:
                raise SkillError(f"{self._death}\nIt was already restarted once; not again.")
            if self._task_group is None:
                raise SkillError(f"skill {self.name!r} is not attached to a running gateway")
            self._starts += 1
            self._stop, self._stopped, self._lost = anyio.Event(), anyio.Event(), anyio.Event()
            try:
                await self._task_group.start(self._serve)
            except Exception as exc:
                self._death = self._describe(f"failed to start ({_reason(exc)})")
                raise SkillError(self._death) from exc
            assert self._session is not None  # noqa: S101 - set before started()
            return self._session

    async def list_tools(self) -> list[types.Tool]:
        """Return the skill's tools after pick/omit (starts a lazy skill).

        Raises:
            SkillError: the skill cannot start.

        """
        await self.ensure_started()
        return filter_tools(self._tools, self.spec.pick, self.spec.omit)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        """Call one tool, with the per-request timeout.

        Raises:
            SkillError: the skill died during the call, timed out, or answered garbage.
            MCPError: the skill answered with a JSON-RPC error (forwarded as it is).

        """
        session = await self.ensure_started()
        try:
            return await session.call_tool(
                name, arguments, read_timeout_seconds=self.spec.timeout_s
            )
        except MCPError as exc:
            if exc.error.code == types.REQUEST_TIMEOUT:
                raise SkillError(
                    f"skill {self.name!r} did not answer tools/call {name!r} "
                    f"within {self.spec.timeout_s:g} s (timeout in perstack.toml)"
                ) from exc
            if exc.error.code != types.CONNECTION_CLOSED:
                raise
            self._lost.set()
            with anyio.move_on_after(DEATH_REPORT_WAIT_S):
                await self._stopped.wait()
            raise SkillError(self._death or self._describe("closed its connection")) from exc
        except (ValidationError, RuntimeError) as exc:
            raise SkillError(f"skill {self.name!r} sent an invalid result for {name!r}") from exc

    async def stop(self) -> None:
        """Stop the skill (bounded, shielded) if it runs."""
        self._stop.set()
        if self._starts and not self._stopped.is_set():
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_S * 3):
                await self._stopped.wait()

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._tail.clear()
        self._handshaken = False
        outcome = "exited with code None"
        try:
            async with self._factory() as process, anyio.create_task_group() as pumps:
                outcome = f"exited with code {await self._run_session(process, pumps, task_status)}"
        except Exception as exc:
            if not self._handshaken:
                raise  # reaches ensure_started through task_group.start
            outcome = f"failed ({_reason(exc)})"  # after start: report, never crash the gateway
        finally:
            self._session = None
            self._stopped.set()
        if not self._stop.is_set():
            self._death = self._describe(outcome)
            logger.warning("%s", self._death)

    async def _run_session(
        self,
        process: SkillProcess,
        pumps: anyio.abc.TaskGroup,
        task_status: anyio.abc.TaskStatus[None],
    ) -> int | None:
        inbound_send, inbound = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        outbound, outbound_receive = anyio.create_memory_object_stream[SessionMessage](0)
        exited, stderr_done = anyio.Event(), anyio.Event()
        pumps.start_soon(_pump_stdout, self.name, process.stdout, inbound_send, exited)
        pumps.start_soon(_pump_stdin, outbound_receive, process.stdin)
        pumps.start_soon(self._pump_stderr, process.stderr, stderr_done)
        try:
            async with ClientSession(
                inbound, outbound, read_timeout_seconds=self.spec.timeout_s, client_info=CLIENT_INFO
            ) as session:
                with anyio.fail_after(STARTUP_TIMEOUT_S):
                    await session.initialize()
                    self._tools = await _list_all_tools(session)
                self._session, self._handshaken = session, True
                task_status.started()
                await _first_of(self._stop.wait, exited.wait, self._lost.wait)
                self._session = None
        finally:
            outbound.close()  # closes the skill's stdin: the MCP shutdown signal
            with anyio.CancelScope(shield=True):
                code = await _wait_or_kill(process)
                with anyio.move_on_after(DRAIN_TIMEOUT_S):
                    await stderr_done.wait()
            pumps.cancel_scope.cancel()
        return code

    async def _pump_stderr(self, stream: anyio.abc.ByteReceiveStream, done: anyio.Event) -> None:
        try:
            async for line in _lines(stream):
                text = line.decode("utf-8", "replace").rstrip()
                self._tail.append(text)
                self._on_stderr(self.name, text)
        finally:
            done.set()

    def _describe(self, what: str) -> str:
        tail = "\n".join(f"  | {line}" for line in self._tail)
        lines = f"; last stderr lines:\n{tail}" if tail else " (no stderr output)"
        return f"skill {self.name!r} {what}{lines}"


def _log_stderr(skill: str, line: str) -> None:
    stderr_logger.info("[%s] %s", skill, line)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    if isinstance(exc, TimeoutError):
        return f"no MCP handshake within {STARTUP_TIMEOUT_S:g} s"
    if isinstance(exc, MCPError):
        return exc.error.message
    return str(exc) or type(exc).__name__


async def _list_all_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


async def _first_of(*waits: Callable[[], Any]) -> None:
    async with anyio.create_task_group() as group:

        async def run(wait: Callable[[], Any]) -> None:
            await wait()
            group.cancel_scope.cancel()

        for wait in waits:
            group.start_soon(run, wait)


async def _wait_or_kill(process: SkillProcess) -> int | None:
    with anyio.move_on_after(SHUTDOWN_GRACE_S):
        return await process.wait()
    await process.kill()
    with anyio.move_on_after(SHUTDOWN_GRACE_S):
        return await process.wait()
    return None


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[bytes]:
    """Yield complete lines (without the newline); a trailing partial line is yielded at EOF."""
    buffer = bytearray()
    with contextlib.suppress(
        anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError
    ):
        while True:
            chunk = await stream.receive()
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                yield bytes(buffer[:end])
                del buffer[: end + 1]
            if len(buffer) > MAX_LINE_BYTES:
                logger.warning("dropping an over-long line (%d bytes)", len(buffer))
                buffer.clear()
    if buffer:
        yield bytes(buffer)


async def _pump_stdout(
    skill: str,
    stream: anyio.abc.ByteReceiveStream,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    exited: anyio.Event,
) -> None:
    try:
        async with sink:
            async for line in _lines(stream):
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValueError:
                    logger.warning("skill %r wrote a non-JSON-RPC line to stdout; ignored", skill)
                    continue
                await sink.send(SessionMessage(message))
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        exited.set()


async def _pump_stdin(
    source: MemoryObjectReceiveStream[SessionMessage], stdin: anyio.abc.ByteSendStream
) -> None:
    try:
        async with source:
            async for message in source:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await stdin.send(data.encode() + b"\n")
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        pass
    finally:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await stdin.aclose()


class RemoteSkillSession(SkillSession):
    """An mcpSseSkill: SSE or streamable HTTP from the host, through the sandbox's proxy.

    The endpoint is tried with the transport its path suggests (`.../sse` means SSE), then with
    the other one, so servers that speak streamable HTTP are accepted too.
    """

    def __init__(self, spec: SkillSpec, endpoint: str, *, proxy_url: str) -> None:
        """Prepare the session; every byte goes through `proxy_url` (an HTTP CONNECT proxy)."""
        super().__init__(spec, _no_process)
        self.endpoint = endpoint
        self._proxy_url = proxy_url

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        kinds = ("sse", "http") if self.endpoint.rstrip("/").endswith("/sse") else ("http", "sse")
        self._handshaken = False
        try:
            try:
                await self._serve_over(kinds[0], task_status)
            except Exception:
                if self._handshaken:
                    raise
                logger.info("skill %r: %s transport failed; trying %s", self.name, *kinds)
                await self._serve_over(kinds[1], task_status)
        except Exception as exc:
            if not self._handshaken:
                raise
            logger.warning("remote skill %r failed: %s", self.name, _reason(exc))
        finally:
            self._session = None
            self._stopped.set()
        if not self._stop.is_set():
            self._death = f"remote skill {self.name!r} lost its connection to {self.endpoint}"

    async def _serve_over(self, kind: str, task_status: anyio.abc.TaskStatus[None]) -> None:
        def client(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                proxy=self._proxy_url,
                verify=ssl.create_default_context(),
                trust_env=False,
                headers=headers,
                timeout=timeout or httpx2.Timeout(self.spec.timeout_s),
                auth=auth,
            )

        async with contextlib.AsyncExitStack() as stack:
            if kind == "sse":
                streams = sse_client(self.endpoint, httpx_client_factory=client)
            else:
                http = await stack.enter_async_context(client())
                streams = streamable_http_client(self.endpoint, http_client=http)
            read, write = await stack.enter_async_context(streams)
            session = await stack.enter_async_context(
                ClientSession(read, write, read_timeout_seconds=self.spec.timeout_s)
            )
            with anyio.fail_after(STARTUP_TIMEOUT_S):
                await session.initialize()
                self._tools = await _list_all_tools(session)
            self._session, self._handshaken = session, True
            task_status.started()
            await _first_of(self._stop.wait, self._lost.wait)


@asynccontextmanager
async def _no_process() -> AsyncIterator[SkillProcess]:
    raise SkillError("a remote skill has no process")
    yield  # pragma: no cover - unreachable; makes this an async generator
