"""Trail retention: which finished run and build trails go, by age and count; open ones never."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import state
from perstack_sandbox.retention import Retention, Trail, prune_trails, select_expired

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


def test_prune_trails_deletes_expired_folders_and_keeps_open_ones(
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
    removed = prune_trails(Retention(max_age_s=7 * DAY, max_count=None), now=NOW)
    assert removed == ["20261102-000000-bbbbbb"]
    assert [run.run_id for run in state.list_runs()] == [ids[0], ids[2]]


def record_build(build_id: str, *, is_open: bool) -> state.RunState:
    """Write a build's record as the build fence does: meta, policy, a journal (closed or not)."""
    build = state.RunState(build_id, state.private_folder(state.builds_dir() / build_id))
    build.update_meta(run_id=build_id, kind="build", status="finished")
    state.write_private(build.policy_path, "{}\n")
    build.record_intent("network", f"{build_id}-net", {})
    if not is_open:
        build.close_journal("torn down by its owner")
    return build


def test_old_build_records_go_by_the_age_in_their_id_and_open_ones_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished build older than the age goes; an older open one and a recent one stay."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    ids = ["build-20261101-000000-aaaaaa", "build-20261102-000000-bbbbbb"]
    ids += ["build-20261129-000000-cccccc"]
    record_build(ids[0], is_open=True)  # a build killed mid-way, not yet collected
    record_build(ids[1], is_open=False)
    record_build(ids[2], is_open=False)
    removed = prune_trails(Retention(max_age_s=7 * DAY, max_count=None), now=NOW)
    assert removed == [ids[1]]
    assert sorted(p.name for p in state.builds_dir().iterdir()) == [ids[0], ids[2]]


def test_the_count_is_kept_per_kind_so_builds_never_push_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_count 1, the newest run and the newest build both stay, whichever is newer."""
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "state"))
    for run_id in ("20261120-000000-aaaaaa", "20261121-000000-bbbbbb"):
        run = state.create_run("demo", run_id=run_id)
        run.record_intent("network", "n", {})
        run.close_journal("torn down")
    for build_id in ("build-20261127-000000-cccccc", "build-20261128-000000-dddddd"):
        record_build(build_id, is_open=False)
    removed = prune_trails(Retention(max_age_s=None, max_count=1), now=NOW)
    assert removed == ["20261120-000000-aaaaaa", "build-20261127-000000-cccccc"]
    assert [run.run_id for run in state.list_runs()] == ["20261121-000000-bbbbbb"]
    assert [p.name for p in state.builds_dir().iterdir()] == ["build-20261128-000000-dddddd"]
