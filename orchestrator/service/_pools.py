"""Warm pools: the one place where the service meets `perstack_sandbox.pool`.

`--pool EXPERT=N` (with `serve --config`) asks for N sandboxes of that Expert started with no
secret in them; a run of the same config and Expert claims one and only then starts its skills
(decision 31). A run that does not fit the pool (a workspace, other limits) starts cold
unless it asked for a pool explicitly (decision 77). The pool engine is
`perstack_sandbox.pool.WarmPool` (decisions 33 and 34); `open_pools` and `run_options` are the
two points the service meets it at, and nothing else in the service knows whether pools exist.
"""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio

from perstack_sandbox.config import load_config
from perstack_sandbox.errors import UsageError
from perstack_sandbox.isolation import check_isolation
from perstack_sandbox.plan import plan as make_plan
from perstack_sandbox.pool import WarmPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.service._api import CreateRun
    from perstack_sandbox.service._metrics import Metrics


NEEDS_CONFIG: Final = "--pool needs --config: the perstack.toml whose Experts to keep warm"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """`--pool EXPERT=N`: keep `size` warm sandboxes of `expert` of the service's config."""

    expert: str
    size: int


def parse_pool(text: str) -> PoolSpec:
    """Parse `EXPERT=N` (N from 1).

    Raises:
        UsageError: malformed, or N is not a positive number.

    """
    expert, sep, size = text.rpartition("=")
    if not sep or not expert or not size.isdigit() or int(size) < 1:
        raise UsageError(f"--pool wants EXPERT=N with N at least 1, got {text!r}")
    return PoolSpec(expert=expert, size=int(size))


@dataclass(slots=True)
class Pools:
    """The service's warm pools, by (config path, Expert, isolation)."""

    config_path: Path | None = None
    held: dict[tuple[str, str, str], WarmPool] = field(default_factory=dict)

    def run_options(self, request: CreateRun) -> dict[str, object]:
        """Return the extra `open_run` keywords of `request`: `pool=` when a pool may serve it.

        A request that leaves `pool` out gets the pool of its config, Expert and isolation
        with `pool_fallback` (a run that does not fit it starts cold); `"pool": true` gets the
        pool without it (a run that does not fit is refused); `false` gets none.

        Raises:
            UsageError: `"pool": true` and the service keeps no pool for this run.

        """
        if request.pool is False:
            return {}
        pool = None
        if request.config_path is not None and request.backend == "docker":
            key = (str(Path(request.config_path).resolve()), request.expert, request.isolation)
            pool = self.held.get(key)
        if pool is not None:
            return {"pool": pool, "pool_fallback": request.pool is None}
        if request.pool:
            raise UsageError(
                f"no warm pool of {request.expert!r} for this config_path, isolation and "
                f"backend (serve --config ... --pool {request.expert}=N)"
            )
        return {}


def check_pools(specs: Sequence[PoolSpec], *, config_path: Path | None, isolation: str) -> None:
    """Check the pools' input (config, Experts, isolation's name) without touching the engine.

    `serve` calls this before its start-up sweep: bad input exits 2 and changes nothing.

    Raises:
        UsageError: pools were asked for without `--config`, or an unknown isolation.
        InputError: the config cannot be read or is invalid, or a pool's Expert is unknown.

    """
    check_isolation(isolation)
    if not specs:
        return
    if config_path is None:
        raise UsageError(NEEDS_CONFIG)
    config, _warnings = load_config(config_path)
    for spec in specs:
        make_plan(config, spec.expert)


@asynccontextmanager
async def open_pools(
    specs: Sequence[PoolSpec],
    *,
    config_path: Path | None,
    isolation: Isolation,
    metrics: Metrics,
) -> AsyncIterator[Pools]:
    """Start every pool of `specs` and yield them; tear them all down on exit.

    Raises:
        UsageError: pools were asked for without `--config`, or a pool's Expert is unknown.
        SandboxError: a pool's sandboxes could not be started (see `WarmPool`).

    """
    pools = Pools(config_path=config_path)
    if not specs:
        yield pools
        return
    if config_path is None:
        raise UsageError(NEEDS_CONFIG)
    config_key = str(await anyio.Path(config_path).resolve())
    async with contextlib.AsyncExitStack() as stack:
        for spec in specs:
            pool = await stack.enter_async_context(
                WarmPool(config_path, spec.expert, spec.size, isolation=isolation)
            )
            pools.held[(config_key, spec.expert, isolation)] = pool
            # Read at each scrape: the sandboxes waiting to be claimed right now.
            metrics.pool_size.labels(spec.expert).set_function(_count_of(pool))
        yield pools


def _count_of(pool: WarmPool) -> Callable[[], float]:
    """Return what the pool-size gauge reads at each scrape: `pool`'s waiting sandboxes."""
    return lambda: pool.available
