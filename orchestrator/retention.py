"""Run-trail retention: which finished runs' folders to delete, by age and by count.

Every run leaves its folder in the state directory (meta.json, audit.jsonl, tools.jsonl...),
and nothing removed them: an afternoon of benchmarks left hundreds. `serve` prunes them
periodically and `gc` prunes them once, under one policy (docs/architecture.md, decision 32):

- a run whose journal is still open (live, or crashed and not yet closed by `gc`) is never
  pruned, whatever its age: its trail is the only record of what it may have left;
- of the finished ones, the newest `max_count` are kept, and of those only the ones younger
  than `max_age_s`.

`select_expired` is the pure policy; `prune_runs` applies it to the state directory.
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
    """When the run began: its id starts with its UTC start time (`state.new_run_id`)."""
    try:
        return datetime.strptime(run.run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(run.path.stat().st_mtime, tz=UTC)
        return datetime.now(UTC)  # unreadable: treated as new, so never pruned by age


def current_trails() -> list[Trail]:
    """Return every run folder of the state directory as the policy sees it."""
    trails = []
    for run in state.list_runs():
        is_open = run.journal_path.is_file() and run.is_journal_open()
        trails.append(Trail(run.run_id, _started(run), is_open=is_open))
    return trails


def prune_runs(policy: Retention, *, now: datetime | None = None) -> list[str]:
    """Delete the run folders `policy` drops; return their ids.

    A folder that cannot be removed is skipped (the next prune tries again).

    Raises:
        ValueError: a limit is negative.

    """
    expired = select_expired(current_trails(), policy, now or datetime.now(UTC))
    removed = []
    for run_id in expired:
        run = state.open_run(run_id)
        if run is None:
            continue
        try:
            shutil.rmtree(run.path)
        except OSError:
            continue
        removed.append(run_id)
    return removed
