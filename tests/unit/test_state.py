"""The state directory is private: 0700 folders, 0600 files, the user's own, never via links."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import audit, state
from perstack_sandbox.engine import _health
from perstack_sandbox.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the state directory at a fresh folder (not yet created)."""
    root = tmp_path / "home" / "state"
    monkeypatch.setenv(state.STATE_ENV, str(root))
    return root


def modes(root: Path) -> dict[str, int]:
    """Map every path under `root` (itself included) to its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_a_new_runs_folders_and_files_are_private_whatever_the_umask(state_root: Path) -> None:
    """runs/<id>/ and everything in it are 0700/0600 even under a permissive umask."""
    old = os.umask(0)
    try:
        run = state.create_run("e")
        state.write_private(run.policy_path, "{}\n")
        run.update_meta(status="running")
    finally:
        os.umask(old)
    found = modes(state_root)
    assert {mode for path, mode in found.items() if (state_root / path).is_dir()} == {0o700}
    assert {mode for path, mode in found.items() if (state_root / path).is_file()} == {0o600}
    assert {path.name for path in run.path.iterdir()} >= {"meta.json", "policy.json", "audit.jsonl"}
    assert all(path.stat().st_uid == os.getuid() for path in state_root.rglob("*"))


def test_an_existing_state_directory_with_wide_modes_is_made_private(state_root: Path) -> None:
    """A state directory an older version left 0755/0644 is fixed throughout at the next run."""
    old_run = state_root / "runs" / "old"
    old_run.mkdir(parents=True)
    (old_run / "policy.json").write_text("{}")
    for path in (state_root, state_root / "runs", old_run):
        path.chmod(0o755)
    (old_run / "policy.json").chmod(0o644)
    (state_root / "builds").mkdir(mode=0o777)
    (state_root / "builds").chmod(0o777)
    state.create_run("e")
    found = modes(state_root)
    assert found["runs/old"] == 0o700
    assert found["runs/old/policy.json"] == 0o600
    assert found["builds"] == 0o700
    assert found["."] == 0o700


def test_links_under_the_state_directory_are_left_alone_when_fixing_modes(
    state_root: Path, tmp_path: Path
) -> None:
    """Fixing modes never follows a link: the file a link points at keeps its own mode."""
    state_root.mkdir(parents=True, mode=0o755)
    state_root.chmod(0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o644)
    (state_root / "link").symlink_to(outside)
    state.ensure_state_dir()
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_a_state_directory_of_another_user_is_refused(
    state_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs are never recorded in a folder someone else owns (and could read or swap)."""
    state_root.mkdir(parents=True)
    monkeypatch.setattr(state.os, "getuid", lambda: state_root.stat().st_uid + 4242)
    with pytest.raises(UsageError, match="belongs to uid"):
        state.create_run("e")


@pytest.mark.usefixtures("state_root")
def test_a_private_file_is_never_opened_through_a_link(tmp_path: Path) -> None:
    """A link planted where a state file goes is refused (ELOOP), and its target is untouched."""
    run = state.create_run("e")
    target = tmp_path / "victim.txt"
    target.write_text("untouched")
    run.policy_path.symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links") as refused:
        state.write_private(run.policy_path, "{}")
    assert refused.value.errno == errno.ELOOP
    assert target.read_text() == "untouched"


@pytest.mark.usefixtures("state_root")
def test_a_state_file_that_existed_with_a_wider_mode_is_narrowed() -> None:
    """Writing an existing 0644 state file makes it 0600 (the mode is set on the descriptor)."""
    run = state.create_run("e")
    run.policy_path.write_text("{}")
    run.policy_path.chmod(0o644)
    state.write_private(run.policy_path, "{}")
    assert stat.S_IMODE(run.policy_path.stat().st_mode) == 0o600


def test_the_proxy_and_run_sink_files_are_created_private(state_root: Path) -> None:
    """The proxy's log follower and the run's audit sink create their files 0600.

    Fails when: `RunFiles` opens its files with a plain `open` (seen by hand: tools.jsonl and
    skills.log came out 0644).
    """
    record = state.RunState("build-x", state.private_folder(state_root / "builds" / "build-x"))
    frame = bytes([1, 0, 0, 0]) + (5).to_bytes(4, "big") + b"hello"

    class Stream:
        def __init__(self) -> None:
            self.chunks = [frame, b""]

        def recv(self, _size: int) -> bytes:
            return self.chunks.pop(0)

    _health._copy_frames(Stream(), record)
    sink = audit.RunFiles(record)
    sink.tool_call(audit.ToolCall("2024-01-01T00:00:00Z", "s", "t", {}, 1.0, "ok"))
    sink.close()
    assert record.audit_path.read_bytes() == b"hello"
    assert modes(record.path) == {
        ".": 0o700,
        "audit.jsonl": 0o600,
        "proxy.log": 0o600,
        "skills.log": 0o600,
        "tools.jsonl": 0o600,
    }


@pytest.mark.usefixtures("state_root")
def test_the_cover_file_is_empty_and_only_readable() -> None:
    """The run's cover, bound over env files, is an empty 0444 file: skills read nothing."""
    run = state.create_run("e")
    cover = run.write_cover()
    assert cover.read_bytes() == b""
    assert stat.S_IMODE(cover.stat().st_mode) == 0o444
