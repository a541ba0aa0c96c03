"""`SkillSession`: one MCP client session with one skill process; start, restart once, stop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import BaseModel, ValidationError

from perstack_sandbox.audit import NULL_SINK
from perstack_sandbox.errors import SkillError
from perstack_sandbox.skills._client import NoBridge, connect_client, list_all
from perstack_sandbox.skills._lines import STDERR_LINE_BYTES, StderrTail, read_lines
from perstack_sandbox.skills._process import first_of, pump_stdin, pump_stdout, wait_or_kill
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from mcp.shared._stream_protocols import ReadStream, WriteStream
    from mcp.shared.dispatcher import ProgressFnT

    from perstack_sandbox.audit import AuditSink
    from perstack_sandbox.skills._client import SkillBridge, SkillClient
    from perstack_sandbox.skills._pin import ToolPin
    from perstack_sandbox.skills._process import ProcessFactory, SkillProcess
    from perstack_sandbox.skills._spec import SkillSpec


STARTUP_TIMEOUT_S: Final = 60.0  # first start of a Node/Python server on 2 busy cores
SHUTDOWN_GRACE_S: Final = 2.0  # MCP spec shutdown: close stdin, wait this long, then kill
DRAIN_TIMEOUT_S: Final = 1.0  # time for a dead skill's last stderr bytes to arrive
DEATH_REPORT_WAIT_S: Final = 5.0  # a failed call waits this long for the death report
RESTARTS: Final = 1
# Which listing a skill's list_changed notification makes stale.
LIST_CHANGED: Final = {
    "notifications/tools/list_changed": "tools",
    "notifications/prompts/list_changed": "prompts",
    "notifications/resources/list_changed": "resources",
}

ResultT = TypeVar("ResultT", bound=BaseModel)
T = TypeVar("T")


class SkillSession:
    """An MCP client session with one skill process; starts, restarts once, stops.

    The session declares to its skill the capabilities of its bridge (the gateway's host
    clients). When they change, the skill is restarted with the new ones at its next use while
    no request is in flight: a skill decides at its handshake which tools it offers.
    """

    def __init__(
        self,
        spec: SkillSpec,
        factory: ProcessFactory,
        *,
        audit: AuditSink = NULL_SINK,
        pin: ToolPin | None = None,
    ) -> None:
        """Prepare (not start) the session; stderr lines and deaths go to the run's `audit`.

        With a `pin`, every tools listing must match the lock's (see `ToolPin`).
        """
        self.spec = spec
        self.pin = pin
        self._factory = factory
        self.audit = audit
        self._tail = StderrTail()
        self._client: SkillClient | None = None
        self._bridge: SkillBridge = NoBridge()
        self._stale: set[str] = set()
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._lost = anyio.Event()
        self._handshaken = False
        self._lock = anyio.Lock()
        self._started = False
        self._failures = 0
        self._in_flight = 0
        self._death: str | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def name(self) -> str:
        """The skill key from perstack.toml."""
        return self.spec.name

    @property
    def is_running(self) -> bool:
        """Whether a live, initialised session exists right now."""
        return self._client is not None

    @property
    def capabilities(self) -> types.ServerCapabilities | None:
        """What the running skill declared at its handshake (None when not running)."""
        return self._client.capabilities if self._client is not None else None

    def bind(self, task_group: anyio.abc.TaskGroup, bridge: SkillBridge | None = None) -> None:
        """Attach the task group that owns this skill's background task, and its bridge."""
        self._task_group = task_group
        self._bridge = bridge or NoBridge()

    async def ensure_started(self) -> SkillClient:
        """Return the live connection, starting (or restarting once) the skill if needed.

        Raises:
            SkillError: the skill cannot start, or died after its one restart.

        """
        async with self._lock:
            client = self._client
            if client is not None and (self._in_flight or not self._redeclare_due(client)):
                return client
            if client is not None:  # the host clients' capabilities changed: handshake again
                await self._stop_now()
            if self._failures > RESTARTS:
                raise SkillError(f"{self._death}\nIt was already restarted once; not again.")
            if self._task_group is None:
                raise SkillError(f"skill {self.name!r} is not attached to a running gateway")
            self._started = True
            self._stop, self._stopped, self._lost = anyio.Event(), anyio.Event(), anyio.Event()
            try:
                await self._task_group.start(self._serve)
            except Exception as exc:
                self._failures += 1
                self._death = self._describe(f"failed to start ({failure_reason(exc)})")
                raise SkillError(self._death) from exc
            assert self._client is not None  # noqa: S101 - set before started()
            return self._client

    def _redeclare_due(self, client: SkillClient) -> bool:
        return client.declared != self._bridge.declared_capabilities()

    async def list_tools(self) -> list[types.Tool]:
        """Return the skill's tools after pick/omit (starts a lazy skill).

        Raises:
            SkillError: the skill cannot start.

        """
        tools: list[types.Tool] = await self.listed_tools()
        return [tool for tool in tools if self.spec.keeps(tool.name)]

    async def listed_tools(self) -> list[types.Tool]:
        """Return every tool the skill lists, before pick/omit, checked against its pin.

        Raises:
            SkillError: the skill cannot start.
            ToolsChangedError: the tools differ from the lock (the skill is refused).

        """
        tools: list[types.Tool] = await self._listing("tools")
        if self.pin is not None:
            self.pin.check(self.name, tools)
        return tools

    async def list_prompts(self) -> list[types.Prompt]:
        """Return the skill's prompts after pick/omit (by prompt name).

        Raises:
            SkillError: the skill cannot start.

        """
        prompts: list[types.Prompt] = await self._listing("prompts")
        return [prompt for prompt in prompts if self.spec.keeps(prompt.name)]

    async def list_resources(self) -> list[types.Resource]:
        """Return the skill's resources after pick/omit (by resource name or URI).

        Raises:
            SkillError: the skill cannot start.

        """
        resources: list[types.Resource] = await self._listing("resources")
        return [item for item in resources if self.spec.keeps(item.name, item.uri)]

    async def hidden_resources(self) -> set[str]:
        """Return the URIs of the skill's listed resources that pick/omit hide.

        Raises:
            SkillError: the skill cannot start.

        """
        resources: list[types.Resource] = await self._listing("resources")
        return {item.uri for item in resources if not self.spec.keeps(item.name, item.uri)}

    async def list_resource_templates(self) -> list[types.ResourceTemplate]:
        """Return the skill's resource templates after pick/omit (by name or URI template).

        Raises:
            SkillError: the skill cannot start.

        """
        templates: list[types.ResourceTemplate] = await self._listing("templates")
        return [item for item in templates if self.spec.keeps(item.name, item.uri_template)]

    async def _listing(self, kind: str) -> list[Any]:
        client = await self.ensure_started()
        stale = kind in self._stale or (kind == "templates" and "resources" in self._stale)
        if stale:
            self._stale.discard("resources" if kind == "templates" else kind)
            fresh = await self._guarded(f"{kind} listing", list_all(client.session, kind))
            setattr(client.catalog, kind, fresh)
            if kind == "resources":
                client.catalog.templates = await list_all(client.session, "templates")
        listed: list[Any] = getattr(client.catalog, kind)
        return listed

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        progress: ProgressFnT | None = None,
    ) -> types.CallToolResult:
        """Call one tool, with the per-request timeout.

        Raises:
            SkillError: the skill died during the call, timed out, or answered garbage.
            ToolsChangedError: the skill's tools differ from the lock (it is refused).
            MCPError: the skill answered with a JSON-RPC error (forwarded as it is).

        """
        pin = self.pin  # a refused skill, or tools changed since: check the tools first
        if pin is not None and (pin.refusal is not None or "tools" in self._stale):
            await self.listed_tools()
        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=name, arguments=arguments)
        )
        return await self.send(request, types.CallToolResult, progress=progress)

    async def send(
        self,
        request: types.ClientRequest,
        result_type: type[ResultT],
        *,
        progress: ProgressFnT | None = None,
    ) -> ResultT:
        """Send one request to the skill and return its typed result.

        Raises:
            SkillError: the skill died during the request, timed out, or answered garbage.
            MCPError: the skill answered with a JSON-RPC error (forwarded as it is).

        """
        client = await self.ensure_started()
        what = _describe_request(request)
        call = client.session.send_request(
            request, result_type, self.spec.timeout_s, progress_callback=progress
        )
        return await self._guarded(what, call)

    async def send_raw(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """Send one request as plain JSON (tasks: results the SDK's typed session refuses).

        Raises:
            SkillError: the skill died during the request or timed out.
            MCPError: the skill answered with a JSON-RPC error.

        """
        client = await self.ensure_started()
        call = client.dispatcher.send_raw_request(method, params, {"timeout": self.spec.timeout_s})
        return await self._guarded(method, call)

    async def _guarded(self, what: str, call: Awaitable[T]) -> T:
        self._in_flight += 1
        try:
            return await call
        except MCPError as exc:
            if exc.error.code == types.REQUEST_TIMEOUT:
                raise SkillError(
                    f"skill {self.name!r} did not answer {what} "
                    f"within {self.spec.timeout_s:g} s (timeout in perstack.toml)"
                ) from exc
            if exc.error.code != types.CONNECTION_CLOSED:
                raise
            self._lost.set()
            with anyio.move_on_after(DEATH_REPORT_WAIT_S):
                await self._stopped.wait()
            raise SkillError(self._death or self._describe("closed its connection")) from exc
        except (ValidationError, RuntimeError) as exc:
            raise SkillError(f"skill {self.name!r} sent an invalid result for {what}") from exc
        finally:
            self._in_flight -= 1

    async def on_notification(self, notification: types.ServerNotification) -> None:
        """Keep the catalog fresh, then pass the notification to the bridge."""
        kind = LIST_CHANGED.get(notification.method)
        if kind is not None:
            self._stale.add(kind)
        await self._bridge.skill_notification(self.name, notification)

    async def stop(self) -> None:
        """Stop the skill (bounded, shielded) if it runs."""
        self._stop.set()
        if self._started and not self._stopped.is_set():
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_S * 3):
                await self._stopped.wait()

    async def _stop_now(self) -> None:
        await self.stop()
        self._client = None

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
            self._client = None
            self._stopped.set()
        if not self._stop.is_set():
            self._failures += 1
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
            await self._hold(inbound, outbound, task_status, exited.wait)
        finally:
            outbound.close()  # closes the skill's stdin: the MCP shutdown signal
            with anyio.CancelScope(shield=True):
                code = await wait_or_kill(process, SHUTDOWN_GRACE_S)
                with anyio.move_on_after(DRAIN_TIMEOUT_S):
                    await stderr_done.wait()
            pumps.cancel_scope.cancel()
        return code

    async def _hold(
        self,
        read: ReadStream[SessionMessage | Exception],
        write: WriteStream[SessionMessage],
        task_status: anyio.abc.TaskStatus[None],
        *ends: Callable[[], Any],
    ) -> None:
        """Handshake over (read, write), publish the client, and hold it until an end."""
        async with connect_client(
            self.name,
            read,
            write,
            timeout_s=self.spec.timeout_s,
            startup_timeout_s=STARTUP_TIMEOUT_S,
            bridge=self._bridge,
            on_notification=self.on_notification,
        ) as client:
            self._stale.clear()
            self._client, self._handshaken = client, True
            task_status.started()
            self._bridge.skill_started(self.name)
            await first_of(self._stop.wait, self._lost.wait, *ends)
            self._client = None

    async def _pump_stderr(self, stream: anyio.abc.ByteReceiveStream, done: anyio.Event) -> None:
        try:
            lines = read_lines(
                stream, warn=self.audit.warning, limit=STDERR_LINE_BYTES, keep_head=True
            )
            async for line in lines:
                text = printable(line.decode("utf-8", "replace").rstrip())
                self._tail.append(text)
                self.audit.skill_stderr(self.name, text)
        finally:
            done.set()

    def _describe(self, what: str) -> str:
        tail = "\n".join(f"  | {line}" for line in self._tail.lines())
        lines = f"; last stderr lines:\n{tail}" if tail else " (no stderr output)"
        return f"skill {self.name!r} {what}{lines}"


def _describe_request(request: types.ClientRequest) -> str:
    name = getattr(request.params, "name", None) or getattr(request.params, "uri", None)
    return f"{request.method} {name!r}" if name else request.method


def failure_reason(exc: BaseException) -> str:
    """Say in a few words why a skill failed (the first leaf of an exception group)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return failure_reason(exc.exceptions[0])
    if isinstance(exc, TimeoutError):
        return f"no MCP handshake within {STARTUP_TIMEOUT_S:g} s"
    if isinstance(exc, MCPError):
        return exc.error.message
    return str(exc) or type(exc).__name__
