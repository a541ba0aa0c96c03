"""A perstack.toml reads env files only from its own folder; `--env-path` may name any file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from perstack_sandbox.config import load_config
from perstack_sandbox.errors import ConfigError, UsageError
from perstack_sandbox.launch import LaunchOptions, prepare
from perstack_sandbox.plan import host_secrets

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

CANARY = "victim-db-password-canary"
SKILL = """
[experts."e"]
instruction = "x"
[experts."e".skills."s"]
type = "mcpStdioSkill"
command = "npx"
packageName = "some-server"
requiredEnv = ["DB_PASSWORD"]
"""


def _victim(tmp_path: Path) -> Path:
    """Write another project's env file, beside the config's folder."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / ".env").write_text(f"DB_PASSWORD={CANARY}\n", encoding="utf-8")
    return victim / ".env"


def _evil(tmp_path: Path, env_path: list[str] | None, arrange: Callable[[Path], None]) -> Path:
    """Write a config folder whose perstack.toml names `env_path`; `arrange` adds files."""
    folder = tmp_path / "evil"
    folder.mkdir()
    listed = "" if env_path is None else f"envPath = {env_path!r}\n".replace("'", '"')
    (folder / "perstack.toml").write_text(listed + SKILL, encoding="utf-8")
    arrange(folder)
    return folder / "perstack.toml"


def _nothing(_folder: Path) -> None:
    """Add no file."""


def _link(name: str, target: str) -> Callable[[Path], None]:
    def arrange(folder: Path) -> None:
        (folder / name).symlink_to(target)

    return arrange


ESCAPES = {
    "relative": (["../victim/.env"], _nothing),
    "absolute": (["{victim}"], _nothing),
    "link in the folder": (["inside.env"], _link("inside.env", "../victim/.env")),
    "link in a path": (["up/.env"], _link("up", "../victim")),
    "default .env as a link": (None, _link(".env", "../victim/.env")),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_an_env_file_outside_the_config_folder_is_refused_and_never_read(
    tmp_path: Path, case: str
) -> None:
    """An envPath entry (or a default `.env` link) leading outside the folder is refused.

    Fails when: the check in `plan.env_files` is removed (seen by hand, 2026-11-30: every
    case returned the victim's DB_PASSWORD and pytest said DID NOT RAISE).
    """
    victim = _victim(tmp_path)
    names, arrange = ESCAPES[case]
    named = None if names is None else [n.format(victim=victim) for n in names]
    config, _ = load_config(_evil(tmp_path, named, arrange))
    with pytest.raises(UsageError, match="outside the config's folder") as caught:
        host_secrets(config, environ={})
    assert "--env-path" in str(caught.value)
    assert CANARY not in str(caught.value)


def test_a_run_of_the_repro_config_stops_before_reading_the_victim(tmp_path: Path) -> None:
    """The reviewer's repro through the CLI's launch path: bad input (exit 2), no value.

    Fails when: the check in `plan.env_files` is removed (seen by hand, 2026-11-30: the
    launch was prepared, pytest said DID NOT RAISE).
    """
    _victim(tmp_path)
    path = _evil(tmp_path, ["../victim/.env"], _nothing)
    said: list[str] = []
    with pytest.raises(UsageError) as caught:
        prepare(LaunchOptions(config_path=path, expert="e", warn=said.append))
    assert CANARY not in str(caught.value) + "".join(said)
    assert any("envPath[0]" in line for line in said)  # the config warning came first


def test_an_env_file_named_with_env_path_may_lie_anywhere(tmp_path: Path) -> None:
    """The user's own `--env-path` replaces envPath and is read wherever it lies."""
    victim = _victim(tmp_path)
    config, _ = load_config(_evil(tmp_path, ["../victim/.env"], _nothing))
    values = host_secrets(config, env_paths=[victim], environ={})
    assert values["DB_PASSWORD"].reveal() == CANARY


def test_env_files_inside_the_folder_are_read_through_links(tmp_path: Path) -> None:
    """The envPath entries and `.env` links that stay inside the folder are read as before."""

    def arrange(folder: Path) -> None:
        (folder / "secrets").mkdir()
        (folder / "secrets" / "db.env").write_text("DB_PASSWORD=inside\n", encoding="utf-8")
        (folder / "link.env").symlink_to("secrets/db.env")

    config, warnings = load_config(_evil(tmp_path, ["link.env", "./secrets/../x.env"], arrange))
    assert warnings == []
    assert host_secrets(config, environ={})["DB_PASSWORD"].reveal() == "inside"


def test_validate_warns_about_an_env_file_outside_and_strict_refuses_it(tmp_path: Path) -> None:
    """`validate` warns with the entry's TOML path; `validate --strict` makes it an error.

    Fails when: `load_config` leaves out `env_file_issues` (seen by hand, 2026-11-30: no
    warning, and --strict said valid).
    """
    _victim(tmp_path)
    path = _evil(tmp_path, ["ok.env", "../victim/.env"], _nothing)
    _, warnings = load_config(path)
    assert [(w.path, w.is_warning) for w in warnings] == [("envPath[1]", True)]
    with pytest.raises(ConfigError) as caught:
        load_config(path, strict=True)
    assert [(i.path, i.is_warning) for i in caught.value.issues] == [("envPath[1]", False)]
