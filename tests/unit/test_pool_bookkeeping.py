"""The warm pool's bookkeeping, with the engine replaced by a recording fake (no Docker)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from anyio.lowlevel import checkpoint

from perstack_sandbox import engine, images, pool, state
from perstack_sandbox.errors import EngineError, RunError, UsageError
from perstack_sandbox.pool import WarmPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.anyio
CONFIG = Path(__file__).resolve().parents[2] / "examples" / "perstack.toml"


class FakeEngine:
    """Records the sandboxes started and torn down; can be told to fail starts."""

    def __init__(self) -> None:
        """Start with nothing started."""
        self.started: list[str] = []
        self.torn_down: list[tuple[str, str]] = []
        self.fail = False

    async def start_sandbox(self, _plan: object, *, run: state.RunState, **_: object) -> object:
        """Start (pretend) a sandbox for `run`, or fail when told to."""
        await checkpoint()
        if self.fail:
            raise EngineError("the engine is gone")
        self.started.append(run.run_id)
        return engine.Sandbox(run.run_id, f"c-{run.run_id}", "10.0.0.2", 3128, "p", "10.0.0.3", "n")

    async def teardown(self, run: state.RunState, status: str) -> None:
        """Record the teardown of `run`."""
        self.torn_down.append((run.run_id, status))


@pytest.fixture
def anyio_backend() -> str:
    """Run on asyncio, as the orchestrator does."""
    return "asyncio"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEngine:
    """Replace every engine and image call the pool makes."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    recorder = FakeEngine()

    @asynccontextmanager
    async def start_slot() -> AsyncIterator[Callable[[], None]]:
        yield lambda: None

    async def image(*_args: object, **_kwargs: object) -> str:
        return "expert:fake"

    async def no_control(_proxy: str) -> None:
        return None

    monkeypatch.setattr(engine, "start_sandbox", recorder.start_sandbox)
    monkeypatch.setattr(engine, "teardown", recorder.teardown)
    monkeypatch.setattr(engine, "start_slot", start_slot)
    monkeypatch.setattr(engine, "open_control", no_control)
    monkeypatch.setattr(engine, "ensure_expert_image_async", image)
    monkeypatch.setattr(engine, "require_isolation", lambda _isolation: None)
    monkeypatch.setattr(images, "ensure_proxy_image", lambda **_: "proxy:fake")
    monkeypatch.setattr(images, "resolved_packages", lambda _image: [])
    return recorder


async def test_concurrent_claims_each_get_a_different_sandbox(fake: FakeEngine) -> None:
    """Three claims at once on a pool of three get three distinct sandboxes."""
    claimed: list[pool.WarmSandbox] = []
    async with WarmPool(CONFIG, "demo", 3) as warm:
        await warm.wait_ready()

        async def claim() -> None:
            claimed.append(await warm.claim())

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(claim)
        for one in claimed:
            one.settled.set()
    assert len({one.run.run_id for one in claimed}) == 3
    assert {one.run.run_id for one in claimed} <= set(fake.started)


async def test_the_refill_waits_until_the_claims_skills_are_up(fake: FakeEngine) -> None:
    """After a claim, no replacement starts until the claim settles; then one does."""
    async with WarmPool(CONFIG, "demo", 1) as warm:
        await warm.wait_ready()
        claimed = await warm.claim()
        await anyio.wait_all_tasks_blocked()
        assert len(fake.started) == 1
        claimed.settled.set()
        await warm.wait_ready()
        assert len(fake.started) == 2
        assert warm.warm_run_ids[0] != claimed.run.run_id


async def test_leaving_the_pool_tears_down_only_the_unclaimed(fake: FakeEngine) -> None:
    """On exit every sandbox still waiting goes (status unclaimed); a claimed one stays."""
    async with WarmPool(CONFIG, "demo", 2) as warm:
        await warm.wait_ready()
        waiting = set(warm.warm_run_ids)
        claimed = await warm.claim()
    assert {run_id for run_id, _ in fake.torn_down} == waiting - {claimed.run.run_id}
    assert {status for _, status in fake.torn_down} == {"unclaimed"}


async def test_a_failing_start_reaches_the_claimer_and_is_torn_down(fake: FakeEngine) -> None:
    """When starts fail, a claim raises EngineError naming the cause; the attempt is removed."""
    fake.fail = True
    async with WarmPool(CONFIG, "demo", 1) as warm:
        with pytest.raises(EngineError, match="cannot start sandboxes: the engine is gone"):
            await warm.claim()
    assert fake.torn_down
    assert {status for _, status in fake.torn_down} == {"failed"}


async def test_a_closed_pool_refuses_a_claim(fake: FakeEngine) -> None:
    """Claiming after the pool was left is a RunError, not a wait."""
    async with WarmPool(CONFIG, "demo", 1) as warm:
        await warm.wait_ready()
    assert fake.torn_down
    with pytest.raises(RunError, match="closed"):
        await warm.claim()


def test_a_pool_of_no_sandbox_is_refused() -> None:
    """A size below one is bad input."""
    with pytest.raises(UsageError, match="at least one"):
        WarmPool(CONFIG, "demo", 0)
