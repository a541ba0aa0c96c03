"""Image build contexts live in the state directory, and a killed build's is collected.

A context used to be a temporary folder in /tmp: a build killed mid-way left it there, out of
reach of `gc` and retention. The engine side (a fenced build killed for real) is in
tests/integration/test_engine_lifecycle.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from perstack_sandbox import state
from perstack_sandbox.engine import _sweep

# Opens a build context, prints its path, then waits to be killed.
HOLD_A_CONTEXT = """
import sys
from perstack_sandbox import state
with state.build_context("expert") as context:
    (context / "Dockerfile").write_text("FROM scratch")
    print(context, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the state directory at a fresh folder."""
    root = tmp_path / "state"
    monkeypatch.setenv(state.STATE_ENV, str(root))
    return root


def contexts_of_this_host(root: Path) -> list[str]:
    """Name the build contexts left under `root` for this host."""
    folder = root / state.CONTEXTS_DIR / socket.gethostname()
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def killed_build(root: Path) -> Path:
    """Return the context of a build process that was SIGKILLed while it held it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_CONTEXT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, state.STATE_ENV: str(root)},
    )
    assert child.stdout is not None
    context = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert context, "the child printed no context"
    return Path(context)


def test_a_build_context_is_a_private_folder_of_the_state_dir_removed_after_the_build(
    state_root,
):
    """Named after this host and process, 0700, and gone when the build ends (even failed)."""
    seen: list[Path] = []

    def failing_build() -> None:
        with state.build_context("base") as context:
            (context / "Dockerfile").write_text("FROM scratch")
            assert context.stat().st_mode & 0o777 == 0o700
            seen.append(context)
            raise RuntimeError("the build failed")

    with pytest.raises(RuntimeError):
        failing_build()
    [context] = seen
    assert context.parent == state_root / state.CONTEXTS_DIR / socket.gethostname()
    assert context.name.startswith(f"{os.getpid()}-")
    assert "-base-" in context.name
    assert not context.exists()
    assert contexts_of_this_host(state_root) == []


def test_a_killed_builds_context_is_removed_by_the_next_gc(state_root, monkeypatch):
    """SIGKILL leaves the context; `gc`'s sweep removes it and names it.

    The engine's part of the sweep is stubbed out (no Docker in unit tests). Seen failing with
    `remove_dead_contexts` left out of `collect_garbage`: the folder was still there.
    """
    context = killed_build(state_root)
    assert context.is_dir()  # SIGKILL runs no `finally`: this is what /tmp used to keep
    monkeypatch.setattr(_sweep, "remove_labelled", lambda *_a, **_k: [])
    monkeypatch.setattr(_sweep, "_remove_unused_shared", list)
    removed = _sweep.collect_garbage()
    assert f"build context {context.name}" in removed
    assert not context.exists()


def test_a_live_builds_context_and_another_hosts_are_kept(state_root):
    """Only dead processes of this host lose their contexts: a live build keeps building."""
    elsewhere = state_root / state.CONTEXTS_DIR / "another-host" / "1-1-expert-00000000"
    elsewhere.mkdir(parents=True)
    with state.build_context("expert") as context:
        dead = killed_build(state_root)
        assert state.remove_dead_contexts() == [f"build context {dead.name}"]
        assert context.is_dir()
    assert elsewhere.is_dir()
