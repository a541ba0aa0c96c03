"""The runs a service holds, each one a task of the service's task group.

A run's task opens a `Run`, mounts its MCP endpoint, and holds both until the run is deleted,
idle too long, too old, its sandbox goes, or the service drains.

A run is created by `Runs.create`, which returns once its skills answered (or raises what
`open_run` raised: the same errors, with the same messages, as the CLI). Its teardown happens in
its own task, so `DELETE` and a drain wait for it (`ManagedRun.done`) and a failed teardown never
takes other runs down with it.
"""

from __future__ import annotations

import contextlib
import hmac
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from perstack_sandbox.config import parse_config
from perstack_sandbox.errors import RunError, UsageError
from perstack_sandbox.gateway import mounted_endpoint, new_token
from perstack_sandbox.run import open_run
from perstack_sandbox.service._api import check_text_config
from perstack_sandbox.service._metrics import DecisionTail, ToolMetrics
from perstack_sandbox.skills import first_of

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus
    from starlette.types import ASGIApp

    from perstack_sandbox.config import PerstackConfig
    from perstack_sandbox.run import Run
    from perstack_sandbox.service._api import CreateRun
    from perstack_sandbox.service._metrics import Metrics
    from perstack_sandbox.service._pools import Pools

SCRATCH_MODE: Final = 0o755  # the Expert's folder of a text config: the skills' uids list it


class UnknownRunError(UsageError):
    """No run of that id is held by this service."""


class DrainingError(RunError):
    """The service is shutting down and takes no new run."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How long a run may live, and how its endpoint is reached."""

    idle_timeout_s: float | None = None  # no MCP request nor tool call for this long
    max_lifetime_s: float | None = None
    allowed_hosts: tuple[str, ...] | None = None  # None: a Unix socket, no Host check
    allowed_origins: tuple[str, ...] = ()


@dataclass(slots=True)
class ManagedRun:
    """One run the service holds: what the API shows, and what its task waits on."""

    run_id: str
    expert: str
    token: str
    started: str
    state: str = "starting"
    skills: tuple[str, ...] = ()
    tools: int = 0
    pooled: bool = False  # its sandbox was claimed from a warm pool (else started cold)
    ended: str = ""  # why it ended (deleted, idle, lifetime, the sandbox went, draining)
    app: ASGIApp | None = None
    last_active: float = field(default_factory=time.monotonic)
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    tail: DecisionTail | None = None

    def touch(self) -> None:
        """Note activity (an MCP request, a tool call): the idle timeout starts again."""
        self.last_active = time.monotonic()

    def opens_with(self, token: str) -> bool:
        """Tell whether `token` is this run's (compared in constant time)."""
        return hmac.compare_digest(token.encode(), self.token.encode())

    def view(self) -> dict[str, object]:
        """Return the run as `GET /v1/runs/{id}` shows it (never its token)."""
        return {
            "id": self.run_id,
            "expert": self.expert,
            "status": self.state,
            "started": self.started,
            "skills": list(self.skills),
            "tools": self.tools,
            "pooled": self.pooled,
        }


class Runs:
    """Every run of one service, and their tasks in the service's task group."""

    def __init__(
        self, group: TaskGroup, *, settings: RunSettings, metrics: Metrics, pools: Pools
    ) -> None:
        """Hold runs as tasks of `group`."""
        self._group, self._settings = group, settings
        self._metrics, self._pools = metrics, pools
        self._runs: dict[str, ManagedRun] = {}
        self._held: set[str] = set()  # every run id this service started (audit after DELETE)
        self.is_draining = False

    def all(self) -> list[ManagedRun]:
        """Return every run held, oldest first."""
        return sorted(self._runs.values(), key=lambda run: run.run_id)

    def get(self, run_id: str) -> ManagedRun:
        """Return the run `run_id`.

        Raises:
            UnknownRunError: no such run here.

        """
        managed = self._runs.get(run_id)
        if managed is None:
            raise UnknownRunError(f"no run {run_id!r} in this service (see GET /v1/runs)")
        return managed

    def check_held(self, run_id: str) -> None:
        """Make sure this service started run `run_id` (live or since deleted).

        Raises:
            UnknownRunError: it did not.

        """
        if run_id not in self._held:
            raise UnknownRunError(f"no run {run_id!r} in this service (see GET /v1/runs)")

    async def create(self, request: CreateRun) -> ManagedRun:
        """Start a run and return it once its skills answered.

        Raises:
            DrainingError: the service is shutting down.
            InputError: the config, expert, env or workspace is bad (as the CLI says it).
            SandboxError: the sandbox or a skill failed to start.

        """
        if self.is_draining:
            raise DrainingError("the service is shutting down: no new runs")
        begun = time.monotonic()
        config, scratch = _config_of(request)
        managed = ManagedRun(
            run_id="",
            expert=request.expert,
            token=new_token(),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        extra = self._pools.run_options(request)
        try:
            run = _run_of(request, config, ToolMetrics(self._metrics, managed.touch), extra)
        except BaseException:
            _remove(scratch)
            raise
        managed.run_id = run.run_id
        self._runs[managed.run_id] = managed
        self._count()
        try:
            await self._group.start(self._hold, managed, run, scratch)
        except BaseException:
            self._runs.pop(managed.run_id, None)
            self._count()
            _remove(scratch)
            raise
        self._held.add(managed.run_id)
        managed.pooled = run.is_pooled
        pooled = "yes" if run.is_pooled else "no"
        self._metrics.run_start.labels(pooled).observe(time.monotonic() - begun)
        return managed

    async def delete(self, run_id: str, why: str = "deleted") -> None:
        """Stop the run and return once it is torn down.

        Raises:
            UnknownRunError: no such run here.

        """
        managed = self.get(run_id)
        managed.ended = managed.ended or why
        managed.stop.set()
        await managed.done.wait()

    async def drain(self) -> None:
        """Take no new run, and tear every run down (in parallel); return when all are gone."""
        self.is_draining = True
        async with anyio.create_task_group() as group:
            for managed in self.all():
                group.start_soon(self._stop_quietly, managed.run_id)

    async def _stop_quietly(self, run_id: str) -> None:
        with contextlib.suppress(UnknownRunError):
            await self.delete(run_id, "the service is shutting down")

    async def count_decisions(self) -> None:
        """Count the proxy decisions each live run's proxy wrote since the last call."""
        tails = [managed.tail for managed in self.all() if managed.tail is not None]  # on the loop
        await anyio.to_thread.run_sync(self._count_tails, tails)

    def _count_tails(self, tails: list[DecisionTail]) -> None:
        for tail in tails:
            tail.count_new(self._metrics)

    def _count(self) -> None:
        for run_state in ("starting", "running", "stopping"):
            count = sum(1 for run in self._runs.values() if run.state == run_state)
            self._metrics.runs.labels(run_state).set(count)

    async def _hold(
        self, managed: ManagedRun, run: Run, scratch: Path | None, *, task_status: TaskStatus[None]
    ) -> None:
        is_started = False
        try:
            async with (
                run,
                mounted_endpoint(
                    run.gateway,
                    allowed_hosts=self._settings.allowed_hosts,
                    allowed_origins=self._settings.allowed_origins,
                ) as app,
            ):
                if run.run_id != managed.run_id:  # a pooled run takes its warm sandbox's id
                    self._runs.pop(managed.run_id, None)
                    managed.run_id = run.run_id
                    self._runs[managed.run_id] = managed
                tools = await run.list_tools()
                managed.app, managed.tools = app, len(tools)
                managed.skills = tuple(skill.name for skill in run.plan.skills)
                managed.skills += tuple(skill.name for skill in run.plan.sse_skills)
                managed.tail = DecisionTail(run.path / "audit.jsonl")
                managed.state = "running"
                self._count()
                is_started = True
                task_status.started()
                await self._until_ended(managed, run)
                managed.state = "stopping"
                self._count()
        except Exception:  # the boundary of one run in a process of many
            if not is_started:
                raise
            # Once started, whatever ends this run (a failed teardown, say) must not end the
            # service's task group and every other run with it; the run's trail records it.
        finally:
            managed.app = None
            if managed.tail is not None:
                managed.tail.count_new(self._metrics)
            self._runs.pop(managed.run_id, None)
            self._count()
            _remove(scratch)
            managed.done.set()

    async def _until_ended(self, managed: ManagedRun, run: Run) -> None:
        """Return when the run is stopped, idle too long, too old, or its sandbox went."""

        async def gone() -> None:
            managed.ended = managed.ended or await run.gateway.wait_stopped()

        waits = [managed.stop.wait, gone]
        idle, lifetime = self._settings.idle_timeout_s, self._settings.max_lifetime_s
        if idle is not None:

            async def idle_out() -> None:
                # The deadline moves with every request: sleeping to it beats an Event per request.
                while (left := managed.last_active + idle - time.monotonic()) > 0:  # noqa: ASYNC110
                    await anyio.sleep(left)
                managed.ended = managed.ended or f"idle for {idle:g} s"

            waits.append(idle_out)
        if lifetime is not None:

            async def old() -> None:
                await anyio.sleep(lifetime)
                managed.ended = managed.ended or f"reached its maximum lifetime of {lifetime:g} s"

            waits.append(old)
        await first_of(*waits)


def _config_of(request: CreateRun) -> tuple[PerstackConfig | str, Path | None]:
    """Return the config of `request` (parsed text, or a path) and a text config's folder.

    A text config has no folder of its own: it gets an empty scratch folder as the Expert's
    folder (/expert), removed with the run; what would need a folder is refused
    (`check_text_config`, docs/architecture.md, decision 57).

    Raises:
        ConfigError: the text is not a valid perstack.toml (every issue, as `validate` says),
            or it names env files or local commands, which need `config_path`.
        UsageError: `config_path` is relative.

    """
    if request.config is None:
        path = Path(request.config_path or "")
        if not path.is_absolute():
            raise UsageError(f"config_path {path} is not absolute (the service has its own cwd)")
        return str(path), None
    scratch = Path(tempfile.mkdtemp(prefix="perstack-serve-"))
    try:
        scratch.chmod(SCRATCH_MODE)
        config = parse_config(request.config, config_dir=str(scratch))[0]
        check_text_config(config, request.expert)
    except BaseException:
        _remove(scratch)
        raise
    return config, scratch


def _run_of(
    request: CreateRun,
    config: PerstackConfig | str,
    sink: ToolMetrics,
    extra: dict[str, object],
) -> Run:
    """Return the run of `request` (not started): its secrets, options and metrics sink.

    Raises:
        UsageError: the workspace is not a folder.

    """
    workspace = request.workspace
    if workspace is not None and not Path(workspace).is_dir():
        raise UsageError(f"--workspace {workspace} is not a folder")
    return open_run(
        config,
        request.expert,
        secrets=request.secrets(),
        workspace=workspace,
        limits=request.limits,
        isolation=request.isolation,
        prefix_tools=request.prefix_tools,
        seal_secrets=request.seal_secrets,
        seal_passthrough=tuple(request.seal_passthrough),
        accept_tool_changes=request.accept_tool_changes,
        backend=request.backend,
        audit=sink,
        **extra,  # type: ignore[arg-type] # only `pool=`, `pool_fallback=` (_pools.run_options)
    )


def _remove(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
