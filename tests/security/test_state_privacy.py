"""The state directory: no skill reads it, not even through a workspace that reaches it."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from support import EXPERT, Hostile, quiet, registry_host, write_expert

from perstack_sandbox import state
from perstack_sandbox.errors import UsageError
from perstack_sandbox.launch import LaunchOptions, open_expert, prepare
from perstack_sandbox.run import _prepare

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

RUN_DEADLINE_S = 120  # a second sandbox on a busy host, its image cached


def every_path(root: Path) -> Iterator[Path]:
    """Yield `root` and every folder and file under it."""
    yield root
    for top, folders, files in os.walk(root):
        yield from (Path(top, name) for name in (*folders, *files))


def plant_state(monkeypatch: pytest.MonkeyPatch, folder: Path) -> state.RunState:
    """Put the state directory at `folder`, with another run and a build holding a canary."""
    canary = f"state-canary-{secrets.token_hex(12)}"
    monkeypatch.setenv(state.STATE_ENV, str(folder))
    other = state.create_run("another-expert")
    state.write_private(other.policy_path, json.dumps({"token": canary}))
    other.update_meta(note=canary)
    build = state.RunState("build-1", state.private_folder(state.state_dir() / "builds" / "b1"))
    state.write_private(build.policy_path, json.dumps({"allowedDomains": [canary]}))
    return other


async def read_state(
    options: LaunchOptions, hostile: Hostile, other: state.RunState, inside: str
) -> dict[str, object]:
    """Run the Expert and have its skill list or read every state path, seen at `inside`.

    Return what each path gave (a listing, the text, or the error's name). The run's own
    files are made before its skills start, so they are among the paths.
    """
    with anyio.fail_after(RUN_DEADLINE_S):
        async with open_expert(options) as gateway:
            attacker = Hostile(
                gateway,
                other,
                {},
                hostile.canaries,
                hostile.workspace,
                options.config_path,
                hostile.isolation,
            )
            root = state.state_dir()
            paths = {
                f"{inside}/{path.relative_to(root)}" if path != root else inside: path.is_dir()
                for path in every_path(root)
            }
            code = (
                f"import os\npaths = {paths!r}\nseen = {{}}\n"
                "for path, is_dir in paths.items():\n"
                "    try: seen[path] = os.listdir(path) if is_dir else open(path).read()\n"
                "    except OSError as exc: seen[path] = outcome_of(exc)\n"
                "emit(seen)"
            )
            seen: dict[str, object] = await attacker.probe(code)
    own = [run for run in state.list_runs() if run.run_id != other.run_id]
    assert len(own) == 1
    assert f"{inside}/runs/{own[0].run_id}/audit.jsonl" in seen
    assert f"{inside}/runs/{other.run_id}/policy.json" in seen
    assert f"{inside}/builds/b1/policy.json" in seen
    return seen


async def test_a_skill_reads_no_state_file_even_when_its_workspace_holds_the_state(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state directory shows empty from a workspace that holds it: nothing below is found.

    The state directory is put inside the workspace and the refusal of such a workspace is
    bypassed. The workspace layer acts with the folder's owner's rights, which the state's
    0700/0600 modes do not stop, so the layer covers the state directory with an empty
    read-only folder: another run's policy, log and meta, a build's record, and this very run's
    own files (the audit the proxy's follower writes as the run goes) are all absent. (A host
    bind mount of the state into the workspace is not served either: the layer binds the
    folder without its submounts, see tests/integration/test_workspace.py.) Fails when: the
    layer gets no cover (checked by hand with `private=()` in engine/_containers.py: the state
    folders were listed and every file read, the canary included).
    """
    workspace = tmp_path / "workspace"
    workspace.mkdir(mode=0o755)
    workspace.chmod(0o755)
    other = plant_state(monkeypatch, workspace / "state")
    monkeypatch.setattr(_prepare, "check_workspace", lambda *_args: None)
    options = LaunchOptions(
        config_path=hostile.run_config,
        expert=EXPERT,
        workspace=workspace,
        prefix_tools=True,
        progress=quiet,
        isolation=hostile.isolation,
    )
    seen = await read_state(options, hostile, other, "/workspace/state")
    assert seen.pop("/workspace/state") == []
    assert seen == dict.fromkeys(seen, "ENOENT")


async def test_a_skill_reads_no_state_file_when_the_expert_folder_holds_the_state(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every folder and file of a state directory inside the Expert's folder is EACCES.

    The state may lie in the Expert's folder (its walk skips it), which /expert shows to the
    skills' own uids: there the modes alone hold. Fails when: the state is made with the old
    modes (checked by hand with a pytest plugin setting `state.DIR_MODE` to 0755 and
    `state.FILE_MODE` to 0644: every folder was listed and every file read).
    """
    config, _ = write_expert(tmp_path / "expert", registry_host())
    other = plant_state(monkeypatch, tmp_path / "expert" / "state")
    options = LaunchOptions(
        config_path=config,
        expert=EXPERT,
        prefix_tools=True,
        progress=quiet,
        isolation=hostile.isolation,
    )
    seen = await read_state(options, hostile, other, "/expert/state")
    assert seen == dict.fromkeys(seen, "EACCES")


@pytest.mark.parametrize("where", ["home", "holding the state"])
async def test_a_workspace_that_is_the_home_or_holds_the_state_is_refused(
    hostile: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The invoking user's home folder, and a folder holding the state directory, are refused.

    Fails when: `check_workspace` accepts them (checked by hand with its home and state
    checks removed: `prepare` returned for both).
    """
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "workspace" / "state"))
    workspace = Path.home() if where == "home" else tmp_path / "workspace"
    options = LaunchOptions(config_path=hostile.run_config, expert=EXPERT, workspace=workspace)
    reason = "is your home folder" if where == "home" else "overlaps the state directory"
    with pytest.raises(UsageError, match=reason):
        prepare(options)
