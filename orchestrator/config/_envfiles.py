"""Which env files a perstack.toml may name: only files inside its own folder (decision 73).

A config is often someone else's (a cloned repository, a pull request). If its `envPath`
could name `../other-project/.env` or an absolute path, running it would read a dotenv file
of yours from anywhere on the host and hand its values to the skills that name them in
requiredEnv. So an env file the config names, or a default `.env`/`.env.local` next to it,
must resolve (links followed) inside the config's folder. A file outside is read only when the
user names it on the command line (`--env-path`), which replaces them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from perstack_sandbox.errors import ConfigIssue

if TYPE_CHECKING:
    from perstack_sandbox.config._model import PerstackConfig

DEFAULT_ENV_FILES: Final = (".env", ".env.local")


def is_outside_folder(config_dir: str | Path, name: str | Path) -> bool:
    """Tell whether env file `name` (relative to `config_dir`, or absolute) lies outside it.

    Links are followed, in the folder and in `name`; a file that does not exist is judged by
    where its path leads. A link loop counts as outside: where it leads cannot be told.
    """
    try:
        root = Path(config_dir).resolve()
        real = (root / name).resolve()
    except (OSError, RuntimeError):
        return True
    return real == root or not real.is_relative_to(root)


def configured_env_files(config: PerstackConfig) -> tuple[str, ...]:
    """Return the env files the config itself makes the CLI read: `envPath`, else the defaults."""
    return tuple(config.env_path) or DEFAULT_ENV_FILES


def env_file_issues(config: PerstackConfig) -> list[ConfigIssue]:
    """Return a warning for each env file of the config that lies outside its folder.

    Such a file is refused when a run would read it (`plan.env_files`); `validate` says so
    first, and `validate --strict` fails on it.
    """
    issues: list[ConfigIssue] = []
    for index, name in enumerate(configured_env_files(config)):
        if not is_outside_folder(config.config_dir, name):
            continue
        where = f"envPath[{index}]" if config.env_path else "envPath"
        what = repr(name) if config.env_path else f"the default {name!r} (a link)"
        issues.append(
            ConfigIssue(
                where,
                f"{what} lies outside the config's folder: a run refuses to read it. Name "
                "the file with --env-path instead if you mean it",
                is_warning=True,
            )
        )
    return issues
