"""`SkillSession`: one MCP client session with one skill process; start, restart once, stop."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import mcp_types as types
from mcp import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.errors import SkillError
from perstack_sandbox.skills._process import pump_stdin, pump_stdout, read_lines
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.skills._process import ProcessFactory, SkillProcess

STARTUP_TIMEOUT_S: Final = 60.0  # first start of a Node/Python server on 2 busy cores
SHUTDOWN_GRACE_S: Final = 2.0  # MCP spec shutdown: close stdin, wait this long, then kill
DRAIN_TIMEOUT_S: Final = 1.0  # time for a dead skill's last stderr bytes to arrive
DEATH_REPORT_WAIT_S: Final = 5.0  # a failed call waits this long for the death report
STDERR_TAIL_LINES: Final = 20
RESTARTS: Final = 1
CLIENT_INFO: Final = types.Implementation(name="perstack-sandbox", version="0.1.0")


@dataclass(frozen=True, slots=True)
class SkillSpec:
    """What the gateway needs to know about one stdio skill."""

    name: str
    pick: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()
    lazy_init: bool = False
    timeout_s: float = 60.0


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
        audit: AuditSink = NULL_SINK,
    ) -> None:
        """Prepare (not start) the session; stderr lines and deaths go to the run's `audit`."""
        self.spec = spec
        self._factory = factory
        self.audit = audit
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
                self._death = self._describe(f"failed to start ({failure_reason(exc)})")
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
            outcome = (
                f"failed ({failure_reason(exc)})"  # after start: report, never crash the gateway
            )
        finally:
            self._session = None
            self._stopped.set()
        if not self._stop.is_set():
            self._death = self._describe(outcome)
            self.audit.warning(self._death)

    async def _run_session(
        self,
        process: SkillProcess,
        pumps: anyio.abc.TaskGroup,
        task_status: anyio.abc.TaskStatus[None],
    ) -> int | None:
        inbound_send, inbound = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        outbound, outbound_receive = anyio.create_memory_object_stream[SessionMessage](0)
        exited, stderr_done = anyio.Event(), anyio.Event()
        pumps.start_soon(
            pump_stdout, self.name, process.stdout, inbound_send, exited, self.audit.warning
        )
        pumps.start_soon(pump_stdin, outbound_receive, process.stdin)
        pumps.start_soon(self._pump_stderr, process.stderr, stderr_done)
        try:
            async with ClientSession(
                inbound, outbound, read_timeout_seconds=self.spec.timeout_s, client_info=CLIENT_INFO
            ) as session:
                with anyio.fail_after(STARTUP_TIMEOUT_S):
                    await session.initialize()
                    self._tools = await list_all_tools(session)
                self._session, self._handshaken = session, True
                task_status.started()
                await first_of(self._stop.wait, exited.wait, self._lost.wait)
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
            async for line in read_lines(stream, warn=self.audit.warning):
                text = printable(line.decode("utf-8", "replace").rstrip())
                self._tail.append(text)
                self.audit.skill_stderr(self.name, text)
        finally:
            done.set()

    def _describe(self, what: str) -> str:
        tail = "\n".join(f"  | {line}" for line in self._tail)
        lines = f"; last stderr lines:\n{tail}" if tail else " (no stderr output)"
        return f"skill {self.name!r} {what}{lines}"


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return failure_reason(exc.exceptions[0])
    if isinstance(exc, TimeoutError):
        return f"no MCP handshake within {STARTUP_TIMEOUT_S:g} s"
    if isinstance(exc, MCPError):
        return exc.error.message
    return str(exc) or type(exc).__name__


async def list_all_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


async def first_of(*waits: Callable[[], Any]) -> None:
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
