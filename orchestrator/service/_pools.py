"""Warm pools: the one place where the service meets `perstack_sandbox.pool`.

`--pool EXPERT=N` (with `serve --config`) asks for N sandboxes of that Expert started with no
secret in them; a run of the same config and Expert claims one and only then starts its skills
(decision 31). The pool engine is `perstack_sandbox.pool.WarmPool` (decisions 33 and 34);
`open_pools` and `run_options` are the two points the service meets it at, and nothing else in
the service knows whether pools exist.
"""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from perstack_sandbox.errors import UsageError
from perstack_sandbox.pool import WarmPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.service._metrics import Metrics


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

    def run_options(
        self, config_path: str | None, expert: str, isolation: Isolation, *, wanted: bool
    ) -> dict[str, object]:
        """Return the extra `open_run` keywords of a run: `pool=` when a pool fits it."""
        if not wanted or config_path is None:
            return {}
        key = (str(Path(config_path).resolve()), expert, isolation)
        pool = self.held.get(key)
        return {} if pool is None else {"pool": pool}


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
        raise UsageError("--pool needs --config: the perstack.toml whose Experts to keep warm")
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
