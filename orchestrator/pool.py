"""Warm pools: sandboxes of one Expert started ahead of time, holding no secret.

A `WarmPool` keeps `size` sandboxes of an Expert's image started: network, proxy and sandbox
container up, no skill running, and a proxy that lets nothing through (it requires a grant and
holds none). `open_run(..., pool=pool)` claims one: the run hands the proxy fresh per-skill
credentials over its control channel and only then starts the skills, each with its own
secrets in its exec environment (docs/architecture.md, decisions 33-34). A claimed sandbox
belongs to that run alone, which tears it down; the pool starts a replacement in the
background. Each warm sandbox is a run of the engine (its own id, folder, journal, labels and
the owner's reaper), so `gc` and the reaper remove it like any run when its owner dies.

```python
async with WarmPool("perstack.toml", "demo", 2) as pool:
    await pool.wait_ready()
    async with open_run("perstack.toml", "demo", secrets={}, pool=pool) as run:
        await run.list_tools()
```
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import anyio

from perstack_sandbox import engine, images, state
from perstack_sandbox.config import PerstackConfig, load_config
from perstack_sandbox.errors import EngineError, RunError, SandboxError, UsageError
from perstack_sandbox.isolation import DEFAULT_ISOLATION, Isolation, check_isolation
from perstack_sandbox.plan import plan as make_plan

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from perstack_sandbox.engine import Sandbox
    from perstack_sandbox.plan import Limits, SandboxPlan, SealedSecrets

RETRY_FIRST_S: Final = 1.0  # after a failed warm start; doubles up to the maximum
RETRY_MAX_S: Final = 30.0
# A refill waits for the claims before it to settle, at most this long (see `_fill`).
REFILL_DEFER_S: Final = 30.0
CLAIM_TIMEOUT_S: Final = 600.0
# Closing a large pool: a few teardowns at once, not one engine call storm nor one at a time.
TEARDOWNS_AT_ONCE: Final = 4  # an empty pool refills one sandbox at a time, under start slots


@dataclass(frozen=True, slots=True)
class WarmSandbox:
    """A claimed sandbox: its engine handle (no credentials yet), its run folder, its image."""

    sandbox: engine.Sandbox
    run: state.RunState
    image: str
    packages: list[dict[str, str]]
    # The proxy's control client, started ahead (`engine.open_control`): the grant's way in.
    control: engine.ExecProcess | None = field(default=None, compare=False)
    # Set by the claimer once its skills answered (or it gave up): the refill waits for it.
    settled: anyio.Event = field(default_factory=anyio.Event, compare=False)


def _quiet(_line: str) -> None:
    """Drop build progress: the library never prints."""


class WarmPool:
    """`size` started sandboxes of `expert`, none holding a secret, each handed out once.

    An async context manager, entered and left by one task: entering builds the images (when
    needed) and starts filling in the background; leaving stops filling and tears down every
    sandbox not claimed. Claimed sandboxes are their runs' to tear down.
    """

    def __init__(  # noqa: PLR0913 - the config, expert and size, then one keyword per choice
        self,
        config: PerstackConfig | str | os.PathLike[str],
        expert: str,
        size: int,
        *,
        isolation: Isolation = DEFAULT_ISOLATION,
        limits: Limits | None = None,
        env_paths: Sequence[str | os.PathLike[str]] = (),
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        """Keep the inputs; nothing is read or started before `async with`.

        Raises:
            UsageError: `size` is below 1.

        """
        if size < 1:
            raise UsageError(f"a warm pool holds at least one sandbox, not {size}")
        self.expert, self.size, self.isolation = expert, size, isolation
        self._config, self._limits = config, limits
        self._env_paths = tuple(os.fspath(path) for path in env_paths)
        self._progress = on_progress or _quiet
        self._plan: SandboxPlan | None = None
        self._image, self._packages = "", list[dict[str, str]]()
        self._ready: list[WarmSandbox] = []
        self._unsettled: list[WarmSandbox] = []
        self._changed = anyio.Event()  # set (and replaced) whenever the pool changes
        self._failure: SandboxError | None = None
        self._closed = False
        self._group: anyio.abc.TaskGroup | None = None

    @property
    def plan(self) -> SandboxPlan:
        """The plan every sandbox of the pool was started for (a run must match it).

        Raises:
            RunError: the pool is not entered yet.

        """
        if self._plan is None:
            raise RunError("the warm pool is not started: use `async with WarmPool(...)`")
        return self._plan

    @property
    def available(self) -> int:
        """How many started sandboxes wait to be claimed now."""
        return len(self._ready)

    @property
    def warm_run_ids(self) -> tuple[str, ...]:
        """The run ids of the sandboxes waiting to be claimed, the next one to go first."""
        return tuple(warm.run.run_id for warm in self._ready)

    async def wait_ready(self, count: int | None = None) -> None:
        """Wait until `count` (default: all `size`) sandboxes are started and unclaimed.

        Raises:
            EngineError: starting sandboxes fails (the last failure is the cause).
            RunError: the pool is closed.

        """
        want = self.size if count is None else min(count, self.size)
        while len(self._ready) < want:
            self._check_usable()
            await self._changed.wait()

    async def claim_for(
        self, plan: SandboxPlan, *, isolation: Isolation, workspace: Path | None
    ) -> WarmSandbox:
        """Claim a sandbox for a run of `plan`, once the run's inputs match the pool's.

        Raises:
            UsageError: the pool was made for another plan or isolation, or a workspace is
                asked (mounts are fixed when the container is created).
            EngineError, RunError: see `claim`.

        """
        reason = self.misfit(plan, isolation=isolation, workspace=workspace)
        if reason is not None:
            raise UsageError(reason)
        return await self.claim()

    def misfit(
        self, plan: SandboxPlan, *, isolation: Isolation, workspace: Path | None
    ) -> str | None:
        """Say why a run of `plan` cannot use this pool, or None when it fits.

        Raises:
            RunError: the pool is not started (it has no plan yet).

        """
        if workspace is not None:
            return "a run with a workspace cannot use a warm pool: mounts are fixed"
        if isolation != self.isolation or plan != self.plan:
            return (
                f"the warm pool holds sandboxes of {self.expert!r} made for another plan or "
                f"isolation than this run's ({plan.expert!r}, {isolation}): same config, "
                "expert, limits, env files and isolation, or no pool"
            )
        return None

    async def claim(self) -> WarmSandbox:
        """Hand out one started sandbox, exactly once; the pool starts a replacement.

        The caller owns it from now on: `engine.grant` gives its proxy credentials, and
        `engine.teardown(claimed.run, status)` removes it (what `open_run(pool=...)` does).
        Its `settled` event tells the pool that the claimer's skills are up: the replacement
        starts then (or `REFILL_DEFER_S` after the claim), not while they start.

        Raises:
            EngineError: none is ready and starting one failed (the last failure is the cause).
            RunError: the pool is closed, or none became ready in time.

        """
        with anyio.move_on_after(CLAIM_TIMEOUT_S):
            while not self._ready:
                self._check_usable()
                await self._changed.wait()
            claimed = self._ready.pop(0)
            self._unsettled.append(claimed)
            self._notify()  # the filler starts its replacement once the claim settled
            claimed.run.update_meta(status="claimed")
            return claimed
        raise RunError(f"no warm sandbox of {self.expert!r} became ready in {CLAIM_TIMEOUT_S} s")

    def _check_usable(self) -> None:
        if self._closed:
            raise RunError(f"the warm pool of {self.expert!r} is closed")
        if self._failure is not None:
            raise EngineError(
                f"the warm pool of {self.expert!r} cannot start sandboxes: {self._failure}"
            ) from self._failure

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def __aenter__(self) -> Self:
        """Plan, build the images when needed, and start filling in the background.

        Raises:
            InputError: bad config, unknown expert, an Expert's folder that is not absolute.
            IsolationError: gVisor was asked for and runsc is missing.
            ImageBuildError: a build failed. EngineError: Docker failed.

        """
        if self._group is not None:
            raise RunError("a warm pool is entered once; make a new one")
        self._plan = await anyio.to_thread.run_sync(self._make_plan)
        self._image = await engine.ensure_expert_image_async(self._plan, progress=self._progress)
        await anyio.to_thread.run_sync(
            functools.partial(images.ensure_proxy_image, progress=self._progress)
        )
        self._packages = await anyio.to_thread.run_sync(images.resolved_packages, self._image)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._fill)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop filling and tear down every unclaimed sandbox (shielded).

        Raises:
            EngineError: a teardown failed (`gc` removes what is left).

        """
        self._closed = True
        self._notify()
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
        left, self._ready = self._ready, []
        failures: list[EngineError] = []
        limiter = anyio.CapacityLimiter(TEARDOWNS_AT_ONCE)

        async def remove(warm: WarmSandbox) -> None:
            async with limiter:
                try:
                    if warm.control is not None:
                        await warm.control.close()
                    await engine.teardown(warm.run, "unclaimed")
                except EngineError as error:
                    failures.append(error)

        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as removing:
                for warm in left:
                    removing.start_soon(remove, warm)
        if failures:
            raise failures[0]

    def _make_plan(self) -> SandboxPlan:
        check_isolation(self.isolation)
        config = self._config
        if not isinstance(config, PerstackConfig):
            config, _warnings = load_config(Path(config))
        plan = make_plan(config, self.expert, self._env_paths)
        if self._limits is not None:
            plan = plan.model_copy(update={"limits": self._limits})
        if not Path(plan.config_dir).is_absolute():
            raise UsageError(f"the Expert's folder {plan.config_dir!r} is not absolute")
        engine.require_isolation(self.isolation)
        return plan

    async def _fill(self) -> None:
        """Keep `size` sandboxes started, one start at a time; back off after a failure."""
        delay = RETRY_FIRST_S
        while True:
            while len(self._ready) >= self.size:
                await self._changed.wait()
            await self._claims_settled()
            try:
                warm = await self._start_one()
            except SandboxError as error:
                self._failure = error
                self._notify()
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._failure, delay = None, RETRY_FIRST_S
            self._ready.append(warm)
            self._notify()

    async def _claims_settled(self) -> None:
        """Wait until the claimed sandboxes' skills are up (each at most `REFILL_DEFER_S`).

        A start is a burst of CPU; on a small host, a refill started at the claim would slow
        the very run it replaces, and a claim is what the pool exists to make fast.
        """
        while self._unsettled:
            claimed = self._unsettled[0]
            with anyio.move_on_after(REFILL_DEFER_S):
                await claimed.settled.wait()
            self._unsettled.remove(claimed)

    async def _start_one(self) -> WarmSandbox:
        """Start one warm sandbox in a run folder of its own; tear it down if that fails."""
        plan = self.plan
        try:
            run = await anyio.to_thread.run_sync(functools.partial(state.create_run, plan.expert))
        except OSError as exc:
            raise RunError(f"cannot write the folder of a warm sandbox: {exc}") from exc
        status = "failed"
        try:
            async with engine.start_slot() as started:
                sandbox = await engine.start_sandbox(
                    plan, image=self._image, run=run, isolation=self.isolation, warm=True
                )
                started()
            control = await engine.open_control(sandbox.proxy_container_id)
            status = "warm"
            return WarmSandbox(sandbox, run, self._image, self._packages, control)
        finally:
            if status != "warm":
                with anyio.CancelScope(shield=True):
                    await engine.teardown(run, status)


class GrantedSandbox:
    """A claimed warm sandbox as a run's sandbox: granted on entry, torn down on exit.

    What `open_run(..., pool=...)` enters in place of `engine.open_sandbox`.
    """

    def __init__(
        self, claimed: WarmSandbox, plan: SandboxPlan, *, sealed: SealedSecrets | None = None
    ) -> None:
        """Hold the claimed sandbox; nothing happens before `async with`."""
        self.claimed, self.plan, self.entered = claimed, plan, False
        self.sealed = sealed

    def started(self) -> None:
        """Tell the pool the skills answered: it may start this sandbox's replacement now."""
        self.claimed.settled.set()

    async def __aenter__(self) -> Sandbox:
        """Give the proxy fresh per-skill credentials; only then may the skills start.

        Raises:
            EngineError: the proxy refused the grant or the engine failed (torn down then).

        """
        self.entered = True
        try:
            sandbox = await engine.grant(
                self.claimed.sandbox, self.plan, control=self.claimed.control
            )
            if self.sealed is not None:  # the real values too, and the run's CA (decision 37)
                bundle = await engine.seal_sandbox(
                    sandbox.proxy_container_id, sandbox.container_ids, self.sealed
                )
                sandbox = dataclasses.replace(sandbox, ca_bundle=bundle)
        except BaseException:
            self.claimed.settled.set()
            with anyio.CancelScope(shield=True):
                await engine.teardown(self.claimed.run, "failed")
            raise
        self.claimed.run.update_meta(status="running")
        return sandbox

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Remove the sandbox (shielded), as `open_sandbox` does for a run of its own.

        Raises:
            EngineError: the teardown failed (`gc` removes what is left).

        """
        self.claimed.settled.set()
        with anyio.CancelScope(shield=True):
            await engine.teardown(self.claimed.run, "failed" if exc is not None else "finished")
