"""The Expert's folder before it is mounted: every env file found, unreadable files refused."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import engine, state
from perstack_sandbox.config import parse_config
from perstack_sandbox.engine import _containers
from perstack_sandbox.errors import UsageError
from perstack_sandbox.plan import (
    Limits,
    check_expert_folder,
    plan,
    plan_to_text,
    uses_expert_folder,
)
from perstack_sandbox.plan import _folder as expert_folder

if TYPE_CHECKING:
    from pathlib import Path

    from perstack_sandbox.plan import SandboxPlan

LOCAL_SKILL = """
[experts."e".skills."local"]
type = "mcpStdioSkill"
command = "python3"
args = ["server.py"]
"""
PACKAGE_SKILL = """
[experts."e".skills."pkg"]
type = "mcpStdioSkill"
command = "npx"
args = ["-y", "some-server"]
"""


def expert(folder: Path, skill: str = LOCAL_SKILL, env_paths: tuple[str, ...] = ()) -> SandboxPlan:
    """Write a readable Expert folder with one skill; return its plan."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    text = f'[experts."e"]\ninstruction = "t"\n{skill}'
    (folder / "perstack.toml").write_text(text, encoding="utf-8")
    config, _ = parse_config(text, config_dir=str(folder.resolve()))
    return plan(config, "e", env_paths)


def write(path: Path, text: str = "X=1\n", mode: int = 0o644) -> Path:
    """Write a file (and its folders, 0755) with `mode`."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_env_files_in_the_folder_are_covered_and_absent_ones_are_not(tmp_path: Path) -> None:
    """`.env` (even 0600) and any other `.env*` file at any depth are covered; none missing."""
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    write(folder / ".env", mode=0o600)
    write(folder / "deep" / "er" / ".envrc")
    write(folder / "config" / ".env.production")
    write(folder / "server.py", "print(1)\n")
    assert check_expert_folder(sandbox).masks == (
        "/expert/.env",
        "/expert/config/.env.production",
        "/expert/deep/er/.envrc",
    )


def test_an_env_path_named_anything_is_covered_where_it_lies(tmp_path: Path) -> None:
    """Files named by envPath or --env-path inside the folder are covered whatever their name."""
    folder = tmp_path / "expert"
    write(folder / "keys" / "prod.txt")
    write(folder / "cli-secrets")
    text = f'envPath = ["keys/prod.txt"]\n[experts."e"]\ninstruction = "t"\n{LOCAL_SKILL}'
    folder.chmod(0o755)
    config, _ = parse_config(text, config_dir=str(folder))
    sandbox = plan(config, "e", (str(folder / "cli-secrets"),))
    assert set(check_expert_folder(sandbox).masks) == {
        "/expert/keys/prod.txt",
        "/expert/cli-secrets",
    }


def test_the_real_place_of_a_linked_env_file_is_covered(tmp_path: Path) -> None:
    """A `.env` link to a file of the folder covers that file; an env file outside is no cover."""
    folder = tmp_path / "expert"
    sandbox = expert(folder, env_paths=(str(tmp_path / "outside-link.env"),))
    write(folder / "data" / "real-secrets.txt")
    (folder / ".env").symlink_to("data/real-secrets.txt")
    write(folder / "kept" / "other.txt")
    (tmp_path / "outside-link.env").symlink_to(folder / "kept" / "other.txt")
    write(tmp_path / "elsewhere.txt")
    (folder / ".env.local").symlink_to(tmp_path / "elsewhere.txt")
    assert check_expert_folder(sandbox).masks == (
        "/expert/data/real-secrets.txt",
        "/expert/kept/other.txt",
    )


def test_every_hard_link_to_an_env_file_in_the_folder_is_covered(tmp_path: Path) -> None:
    """Another name of `.env`'s inode (st_nlink > 1) reads the same secrets: it is covered too."""
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    env = write(folder / ".env")
    (folder / "sub").mkdir(mode=0o755)
    (folder / "sub" / "backup.txt").hardlink_to(env)
    (tmp_path / "outside.txt").hardlink_to(env)
    assert env.stat().st_nlink == 3
    assert check_expert_folder(sandbox).masks == ("/expert/.env", "/expert/sub/backup.txt")


def test_links_are_never_followed_out_of_the_folder(tmp_path: Path) -> None:
    """A linked folder is not walked: its `.env` and its private files are not the folder's."""
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    write(tmp_path / "other" / ".env")
    write(tmp_path / "other" / "private.key", mode=0o600)
    (folder / "linked").symlink_to(tmp_path / "other")
    assert check_expert_folder(sandbox).masks == ()


def test_a_private_folder_is_refused_naming_it_and_why(tmp_path: Path) -> None:
    """A 0700 Expert folder (mktemp -d) is refused: skills run as other uids and cannot enter."""
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    folder.chmod(0o700)
    with pytest.raises(UsageError) as refused:
        check_expert_folder(sandbox)
    message = str(refused.value)
    assert f"{folder} (mode 0700" in message
    assert "cannot list and enter (needs o+rx)" in message
    assert f"uids {engine.SKILL_UID_FIRST} and up" in message  # one fact: the engine's


def test_a_file_others_cannot_read_is_refused_but_a_private_env_file_is_not(
    tmp_path: Path,
) -> None:
    """Every unreadable file is named; env files are covered instead of checked."""
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    write(folder / ".env", mode=0o600)
    write(folder / "server.py", mode=0o640)
    write(folder / "lib" / "util.py", mode=0o600)
    write(folder / "locked" / "data.json", "{}", mode=0o644)
    (folder / "locked").chmod(0o711)
    with pytest.raises(UsageError) as refused:
        check_expert_folder(sandbox)
    lines = str(refused.value).splitlines()
    assert any(f"{folder / 'server.py'} (mode 0640" in line for line in lines)
    assert any(f"{folder / 'lib' / 'util.py'} (mode 0600" in line for line in lines)
    assert any(f"{folder / 'locked'} (mode 0711" in line for line in lines)
    assert not any(".env" in line for line in lines)


def test_a_private_folder_that_holds_only_env_files_is_accepted(tmp_path: Path) -> None:
    """A 0700 `secrets/` with the envPath file is fine: skills need nothing in it; it is covered."""
    folder = tmp_path / "expert"
    text = f'envPath = ["secrets/app.env"]\n[experts."e"]\ninstruction = "t"\n{LOCAL_SKILL}'
    config, _ = parse_config(text, config_dir=str(folder))
    write(folder / "secrets" / "app.env", mode=0o600)
    write(folder / "secrets" / ".env.old", mode=0o600)
    (folder / "secrets").chmod(0o700)
    folder.chmod(0o755)
    assert check_expert_folder(plan(config, "e")).masks == ("/expert/secrets/app.env",)
    write(folder / "secrets" / "notes.txt", mode=0o600)
    with pytest.raises(UsageError, match="secrets \\(mode 0700"):
        check_expert_folder(plan(config, "e"))


def test_only_an_expert_whose_skills_work_in_expert_must_be_readable(tmp_path: Path) -> None:
    """A private folder of package skills is neither mounted nor walked; one naming /expert is."""
    folder = tmp_path / "expert"
    sandbox = expert(folder, PACKAGE_SKILL)
    write(folder / ".env", mode=0o600)
    folder.chmod(0o700)
    assert not uses_expert_folder(sandbox)
    assert check_expert_folder(sandbox) == expert_folder.FolderCheck(masks=(), entries=0)
    naming = expert(tmp_path / "b", PACKAGE_SKILL.replace('"some-server"', '"x", "--root=/expert"'))
    assert uses_expert_folder(naming)
    (tmp_path / "b").chmod(0o700)
    with pytest.raises(UsageError, match="cannot read the Expert's folder"):
        check_expert_folder(naming)


def test_an_expert_of_package_skills_gets_no_expert_mount(tmp_path: Path) -> None:
    """npx/uvx skills that never name /expert get no mount of the config's folder at all.

    Fails when: `plan` mounts the folder whatever the skills (seen by hand, 2026-11-30, with
    `needs_expert_folder` answering True: the plan and the container both had /expert).
    """
    folder = tmp_path / "repo"
    sandbox = expert(folder, PACKAGE_SKILL)
    write(folder / ".git" / "config", "[http]\n\textraheader = AUTHORIZATION: basic x\n")
    assert (sandbox.mounts, sandbox.expert_mount) == ((), None)
    assert "not mounted  /expert" in plan_to_text(sandbox)
    spec = _containers.SandboxSpec(
        "r", "e", "img", Limits(), str(folder), None, "{}",
        expert_mounted=sandbox.expert_mount is not None,
    )  # fmt: skip
    assert _containers._mounts(spec, None) == []


@pytest.mark.parametrize(
    ("skill", "mounted"),
    [
        (LOCAL_SKILL, True),
        (PACKAGE_SKILL.replace('"some-server"', '"x", "/expert/data"'), True),
        (PACKAGE_SKILL.replace('"some-server"', '"x", "--root=/expert"'), True),
        (PACKAGE_SKILL, False),
    ],
)
def test_the_folder_is_mounted_for_a_local_skill_or_an_argument_naming_it(
    tmp_path: Path, skill: str, *, mounted: bool
) -> None:
    """A local command, or an argument naming /expert anywhere in it, mounts the folder."""
    sandbox = expert(tmp_path / "expert", skill)
    assert (sandbox.expert_mount is not None) is mounted


def test_every_git_in_the_folder_is_covered_and_never_walked(tmp_path: Path) -> None:
    """Each `.git` folder is covered empty, each `.git` file by the cover; none is checked.

    Fails when: `.git` entries are not collected in `_list` (seen by hand, 2026-11-30: no
    folder mask, and the `.git` file had no cover).
    """
    folder = tmp_path / "repo"
    sandbox = expert(folder, env_paths=(str(folder / ".git" / "creds.env"),))
    write(folder / ".git" / "config", mode=0o600)
    write(folder / ".git" / "creds.env", mode=0o600)  # hidden with its folder: no own cover
    (folder / ".git").chmod(0o700)
    write(folder / "vendor" / "lib" / ".git", "gitdir: ../../.git/modules/lib\n", mode=0o600)
    write(folder / "nested" / ".git" / "HEAD")
    write(folder / "nested" / ".git" / ".env.cached")
    (folder / "linked").mkdir(mode=0o755)
    (folder / "linked" / ".git").symlink_to("../.git")  # resolves to the covered folder
    found = check_expert_folder(sandbox)
    assert found.folder_masks == ("/expert/.git", "/expert/nested/.git")
    assert found.masks == ("/expert/vendor/lib/.git",)


def test_a_git_folder_is_a_read_only_empty_tmpfs_after_the_folder() -> None:
    """Each folder mask is an empty read-only tmpfs, mounted with the covers after /expert."""
    spec = _containers.SandboxSpec(
        "r", "e", "img", Limits(), "/srv/expert", None, "{}", ("/expert/.env",), "/c",
        expert_mounted=True, folder_masks=("/expert/.git",),
    )  # fmt: skip
    mounts = _containers._mounts(spec, None)
    assert [(m["Target"], m["Type"], m["ReadOnly"]) for m in mounts] == [
        ("/expert", "bind", True),
        ("/expert/.env", "bind", True),
        ("/expert/.git", "tmpfs", True),
    ]


def test_a_folder_too_large_to_check_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The walk is bounded: past MAX_ENTRIES the run is refused, not mounted unchecked."""
    monkeypatch.setattr(expert_folder, "MAX_ENTRIES", 5)
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    for index in range(6):
        write(folder / f"f{index}.py")
    with pytest.raises(UsageError, match="more than 5 entries"):
        check_expert_folder(sandbox)


def test_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    """A plan whose folder has gone is refused with its path, not a traceback."""
    sandbox = expert(tmp_path / "gone")
    (tmp_path / "gone" / "perstack.toml").unlink()
    (tmp_path / "gone").rmdir()
    with pytest.raises(UsageError, match="gone"):
        check_expert_folder(sandbox)


def test_call_on_a_private_expert_folder_exits_2_before_docker(tmp_path: Path) -> None:
    """The CLI refuses a 0700 Expert folder with exit code 2 and the path, touching no engine."""
    folder = tmp_path / "expert"
    expert(folder)
    folder.chmod(0o700)
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "perstack_sandbox",
            "call",
            "e",
            "t",
            "-c",
            str(folder / "perstack.toml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: the skills cannot read the Expert's folder {folder}")
    assert "Traceback" not in done.stderr


def test_each_cover_is_a_read_only_bind_of_the_cover_file_after_the_folder() -> None:
    """The sandbox's mounts: /expert read-only, a read-only `cover` per env file, the workspace.

    The workspace is the layer's view (a volume folder), never the user's folder itself.
    """
    spec = _containers.SandboxSpec(
        "r", "e", "img", Limits(), "/srv/expert", "/home/u/p", "{}", ("/expert/.env",), "/c",
        expert_mounted=True,
    )  # fmt: skip
    mounts = _containers._mounts(spec, "/volumes/v/_data")
    assert [(m["Target"], m["Source"], m["ReadOnly"]) for m in mounts] == [
        ("/expert", "/srv/expert", True),
        ("/expert/.env", "/c", True),
        ("/workspace", "/volumes/v/_data", False),
    ]


def test_a_state_directory_inside_the_folder_is_neither_walked_nor_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The private state directory may lie in the Expert's folder: it is ours, skipped whole."""
    folder = tmp_path / "expert"
    sandbox = expert(folder)
    monkeypatch.setenv(state.STATE_ENV, str(folder / "records"))
    run = state.create_run("e")
    write(run.path / ".env.copy", mode=0o600)
    assert check_expert_folder(sandbox).masks == ()
    monkeypatch.setenv(state.STATE_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(UsageError, match="records \\(mode 0700"):
        check_expert_folder(sandbox)
