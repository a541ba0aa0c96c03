"""Run-trail retention: which finished trails go, by age and count; open ones never."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import state
from perstack_sandbox.retention import Retention, Trail, prune_runs, select_expired

if TYPE_CHECKING:
    from pathlib import Path

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = 86400.0


def trail(run_id: str, days_ago: float, *, is_open: bool = False) -> Trail:
    """Return a trail that started `days_ago` days before NOW."""
    return Trail(run_id, NOW - timedelta(days=days_ago), is_open=is_open)


def test_the_oldest_finished_trails_beyond_the_count_go() -> None:
    """With max_count 2 of four finished trails, the two oldest are expired."""
    trails = [trail("d", 1), trail("a", 4), trail("c", 2), trail("b", 3)]
    assert select_expired(trails, Retention(max_age_s=None, max_count=2), NOW) == ["a", "b"]


def test_trails_older_than_the_age_go_whatever_the_count() -> None:
    """max_age 2 days expires the 3- and 4-day-old trails even under the count."""
    trails = [trail("a", 4), trail("b", 3), trail("c", 1)]
    assert select_expired(trails, Retention(max_age_s=2 * DAY, max_count=100), NOW) == ["a", "b"]


def test_an_open_trail_is_never_expired() -> None:
    """A live (or crashed, not yet collected) run keeps its trail, however old and many."""
    trails = [trail("a", 30, is_open=True), trail("b", 20), trail("c", 10, is_open=True)]
    assert select_expired(trails, Retention(max_age_s=DAY, max_count=0), NOW) == ["b"]


def test_no_limits_expire_nothing() -> None:
    """Both limits off: every trail is kept."""
    trails = [trail("a", 400), trail("b", 300)]
    assert select_expired(trails, Retention(max_age_s=None, max_count=None), NOW) == []


def test_a_negative_limit_is_refused() -> None:
    """A negative count or age is a mistake, not 'keep none'."""
    with pytest.raises(ValueError, match="negative"):
        select_expired([], Retention(max_count=-1), NOW)


def test_prune_runs_deletes_expired_folders_and_keeps_open_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a real state directory the finished old runs go; the newest and the open one stay."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    ids = ["20261101-000000-aaaaaa", "20261102-000000-bbbbbb", "20261129-000000-cccccc"]
    runs = [state.create_run("demo", run_id=run_id) for run_id in ids]
    runs[0].record_intent("network", "n", {})  # an open journal: live, or crashed
    for run in runs[1:]:
        run.record_intent("network", "n", {})
        run.close_journal("torn down")
    removed = prune_runs(Retention(max_age_s=7 * DAY, max_count=None), now=NOW)
    assert removed == ["20261102-000000-bbbbbb"]
    assert [run.run_id for run in state.list_runs()] == [ids[0], ids[2]]
