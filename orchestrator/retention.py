"""Trail retention: which finished runs' and builds' folders to delete, by age and by count.

Every run leaves its folder in the state directory (meta.json, audit.jsonl, tools.jsonl...),
and every fenced image build its record under `builds/` (meta.json, policy.json, audit.jsonl,
proxy.log, journal.jsonl), and nothing removed them: an afternoon of benchmarks left hundreds.
`serve` prunes them periodically and `gc` prunes them once, under one policy
(docs/architecture.md, decisions 32 and 56), applied to runs and to builds separately:

- a run whose journal is still open (live, or crashed and not yet closed by `gc`) is never
  pruned, whatever its age: its trail is the only record of what it may have left;
- of the finished ones, the newest `max_count` are kept, and of those only the ones younger
  than `max_age_s`.

`select_expired` is the pure policy; `prune_trails` applies it to the state directory. The
count is per kind, so that a burst of image builds never pushes a run's trail out, nor the
other way round.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from perstack_sandbox import state

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

DEFAULT_MAX_AGE_S: Final = 7 * 24 * 3600.0  # a week of trails to audit after the fact
DEFAULT_MAX_COUNT: Final = 500  # about what a busy day of runs leaves


@dataclass(frozen=True, slots=True)
class Retention:
    """How long and how many finished run trails to keep (None: no limit of that kind)."""

    max_age_s: float | None = DEFAULT_MAX_AGE_S
    max_count: int | None = DEFAULT_MAX_COUNT


@dataclass(frozen=True, slots=True)
class Trail:
    """One run folder as the policy sees it."""

    run_id: str
    started: datetime  # from the run id (sortable by start time), or the folder's mtime
    is_open: bool  # its journal has no closing line: live, or crashed and not yet collected


def select_expired(trails: Sequence[Trail], policy: Retention, now: datetime) -> list[str]:
    """Return the run ids `policy` drops from `trails`, oldest first; open ones never.

    Raises:
        ValueError: a limit is negative.

    """
    if (policy.max_count or 0) < 0 or (policy.max_age_s or 0) < 0:
        raise ValueError("retention limits cannot be negative")
    finished = sorted((t for t in trails if not t.is_open), key=lambda t: (t.started, t.run_id))
    expired: set[str] = set()
    if policy.max_count is not None and len(finished) > policy.max_count:
        expired.update(t.run_id for t in finished[: len(finished) - policy.max_count])
    if policy.max_age_s is not None:
        expired.update(
            t.run_id for t in finished if (now - t.started).total_seconds() > policy.max_age_s
        )
    return [t.run_id for t in finished if t.run_id in expired]


def _started(run: state.RunState) -> datetime:
    """When the run or build began: its id starts with its UTC start time (`state.new_run_id`).

    A build's id is the same stamp behind `state.BUILD_PREFIX` (`engine._fence.new_build_id`).
    """
    stamp = run.run_id.removeprefix(state.BUILD_PREFIX)[:15]
    try:
        return datetime.strptime(stamp, "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(run.path.stat().st_mtime, tz=UTC)
        return datetime.now(UTC)  # unreadable: treated as new, so never pruned by age


def current_trails(root: Path) -> list[Trail]:
    """Return every folder of `root` (the runs' or the builds' folder) as the policy sees it."""
    if not root.is_dir():
        return []
    trails = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        folder = state.RunState(run_id=path.name, path=path)
        is_open = folder.journal_path.is_file() and folder.is_journal_open()
        trails.append(Trail(folder.run_id, _started(folder), is_open=is_open))
    return trails


def prune_trails(policy: Retention, *, now: datetime | None = None) -> list[str]:
    """Delete the run and build folders `policy` drops, each kind apart; return their ids.

    Build ids start with `state.BUILD_PREFIX`. A folder that cannot be removed is skipped (the
    next prune tries again).

    Raises:
        ValueError: a limit is negative.

    """
    moment = now or datetime.now(UTC)
    removed = []
    for root in (state.runs_dir(), state.builds_dir()):
        for trail_id in select_expired(current_trails(root), policy, moment):
            try:
                shutil.rmtree(root / trail_id)
            except OSError:
                continue
            removed.append(trail_id)
    return removed
