"""Lock version 2 pins each tool's title and annotations; a version 1 lock must be upgraded."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import mcp_types as types
import pytest
from test_lock_file import CONFIG, Recorder, _entry, _plan

from perstack_sandbox import engine, lock, locking
from perstack_sandbox.errors import LockError, ToolsChangedError
from perstack_sandbox.launch import LaunchOptions
from perstack_sandbox.skills import ToolPin, pinned_tools

if TYPE_CHECKING:
    from pathlib import Path

SAFE = types.ToolAnnotations(read_only_hint=True, destructive_hint=False)
FLIPPED = types.ToolAnnotations(read_only_hint=False, destructive_hint=True)


def _tool(title: str = "Read notes", annotations: types.ToolAnnotations = SAFE) -> types.Tool:
    return types.Tool(
        name="notes",
        title=title,
        description="Read the notes.",
        input_schema={"type": "object"},
        annotations=annotations,
    )


def test_a_flipped_annotation_is_refused_and_audited_like_a_description_change() -> None:
    """readOnlyHint/destructiveHint turned around after the lock: refused, diff in the audit.

    Fails when: `annotations` is left out of `TOOL_FIELDS` (seen by hand, 2026-11-30: the
    flipped listing matched the pin and pytest said DID NOT RAISE).
    """
    audit = Recorder()
    pin = ToolPin(pinned_tools([_tool()]), audit=audit)
    with pytest.raises(ToolsChangedError) as caught:
        pin.check("s", [_tool(annotations=FLIPPED)])
    assert '-    "readOnlyHint": true' in str(caught.value)
    assert '+    "destructiveHint": true,' in str(caught.value)
    assert len(audit.warnings) == 1
    assert audit.warnings[0].startswith("tool-pin refused")
    assert '+    "readOnlyHint": false' in audit.warnings[0]


def test_a_renamed_title_is_refused() -> None:
    """A tool shown under another title than the reviewed one is refused with the diff.

    Fails when: `title` is left out of `TOOL_FIELDS` (seen by hand, 2026-11-30: DID NOT RAISE).
    """
    pin = ToolPin(pinned_tools([_tool()]))
    with pytest.raises(ToolsChangedError, match=r'\+  "title": "Read notes \(safe\)"'):
        pin.check("s", [_tool(title="Read notes (safe)")])


def _v1_lock(tmp_path: Path) -> Path:
    """Write a version 1 lock of `CONFIG` (its tools pinned without title or annotations)."""
    (tmp_path / "perstack.toml").write_text(CONFIG, encoding="utf-8")
    document = {"lockfileVersion": 1, "experts": {"e": _entry(_plan(folder=str(tmp_path)))}}
    path = lock.lock_path(tmp_path)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_a_version_1_lock_is_refused_saying_what_it_misses_and_what_to_run(
    tmp_path: Path,
) -> None:
    """A run, a build and `lock --check` refuse a version 1 lock (exit 2), naming the fix.

    Fails when: `read_lock` still takes version 1 as current (seen by hand, 2026-11-30: the
    old lock was read: DID NOT RAISE).
    """
    path = _v1_lock(tmp_path)
    with pytest.raises(LockError, match=r"version 1 lock.*title.*`perstack-sandbox lock`"):
        lock.read_lock(path)
    with pytest.raises(LockError, match="version 1 lock"):
        locking.check_lock(tmp_path / "perstack.toml", None, outdated=False)


def test_lock_upgrades_a_version_1_lock_keeping_its_packages_and_relisting_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read for `lock`, each expert is stale until relisted, and keeps its locked packages."""
    upgraded = lock.read_lock(_v1_lock(tmp_path), upgrade=True)
    assert upgraded is not None
    assert upgraded["lockfileVersion"] == lock.LOCK_VERSION
    sandbox = _plan(folder=str(tmp_path))
    [reason] = lock.stale_reasons(upgraded, sandbox)
    assert "lock version 1" in reason
    resolved: list[str] = []

    def resolve(plan: Any, **_: object) -> dict[str, Any]:
        resolved.append(plan.expert)
        return {"fresh": True}

    monkeypatch.setattr(engine, "resolve_lock", resolve)
    old = lock.expert_lock(upgraded, "e")
    options = LaunchOptions(config_path=tmp_path / "perstack.toml", expert="e")
    kept = locking._entry_to_list(sandbox, old, options, update=False)
    assert (resolved, lock.RELIST_KEY in kept) == ([], False)
    assert kept["skills"]["srv"]["package"] == _entry(sandbox)["skills"]["srv"]["package"]
    assert locking._entry_to_list(sandbox, old, options, update=True) == {"fresh": True}
    assert resolved == ["e"]
