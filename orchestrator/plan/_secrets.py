"""Secret values for skills: where they come from, and the exact environment each skill gets.

The library takes values as a mapping its caller chose (`open_run(secrets=...)`); the sources
here are helpers. The CLI's (`host_secrets`): the host environment and dotenv files. Which
files: `--env-path` (repeatable), else the TOML's `envPath`, else `.env` then `.env.local`;
later files override earlier ones and the real environment wins over every file. Relative
TOML/default paths resolve against the config's folder (the CLI makes its own `--env-path`
values absolute against the current folder, like every other path a user types).

A skill's environment is exactly its own requiredEnv values, the proxy and CA variables, and a
minimal PATH, HOME (a private folder) and LANG: nothing else from the host leaks in.

Values are wrapped in `Secret` as soon as they are read, so an accidental `print`, f-string or
log line shows `Secret('***')`; only `reveal()` hands out the value, at the one place that
builds an exec environment. Errors name variables, files and line numbers, never values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from perstack_sandbox.config import DEFAULT_ENV_FILES, is_outside_folder
from perstack_sandbox.errors import EnvFileError, MissingEnvError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from perstack_sandbox.config import PerstackConfig
    from perstack_sandbox.plan._plan import SandboxPlan

MINIMAL_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_LANG: Final = "C.UTF-8"

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class Secret:
    """A secret value that never prints: `repr`/`str`/`format` all show `Secret('***')`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        """Wrap `value`; only `reveal()` gives it back."""
        self._value = value

    def reveal(self) -> str:
        """Return the real value (call only where it is handed to a skill's process)."""
        return self._value

    def __repr__(self) -> str:
        """Show a placeholder, never the value."""
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        """Format as the placeholder, whatever the spec."""
        return repr(self)

    def __eq__(self, other: object) -> bool:
        """Compare by value (tests and de-duplication), without exposing it."""
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        """Hash like the wrapped value."""
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        """Refuse pickling: a secret must not be serialised by accident.

        Raises:
            TypeError: always.

        """
        raise TypeError("Secret values cannot be pickled")


def parse_dotenv(
    text: str, *, source: str, warn: Callable[[str], None] | None = None
) -> dict[str, Secret]:
    r"""Parse a dotenv file strictly: `KEY=VALUE` lines, `export ` prefix, `#` comments.

    Values may be bare (trailing ` #comment` dropped, surrounding blanks trimmed), single-quoted
    (literal) or double-quoted (escapes `\n \t \r \" \\ \$`). A leading UTF-8 byte-order mark
    is ignored. A key set twice keeps its later value, and `warn` (if given) is told so. No
    interpolation, no multi-line values.

    Raises:
        EnvFileError: lines are malformed; it names EVERY bad line as `source:line`, never a
            value.

    """
    values: dict[str, Secret] = {}
    first_seen: dict[str, int] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        line = line.removeprefix("export ").lstrip()
        name, equals, rest = line.partition("=")
        name = name.strip()
        try:
            if not equals or not _NAME.fullmatch(name):
                _bad_line(where, "expected NAME=VALUE with NAME made of letters, digits and _")
            value = _parse_value(rest.strip(), where, name)
        except _BadLineError as exc:
            problems.append(str(exc))
            continue
        if name in first_seen and warn is not None:
            warn(
                f"{where}: {name} is set again (first on line {first_seen[name]}); "
                "the later value wins"
            )
        first_seen.setdefault(name, number)
        values[name] = Secret(value)
    if problems:
        raise EnvFileError(problems)
    return values


class _BadLineError(ValueError):
    """One malformed line (collected, so that every bad line is reported at once)."""


def _bad_line(where: str, why: str) -> NoReturn:
    raise _BadLineError(f"{where}: {why}")


def _parse_value(rest: str, where: str, name: str) -> str:
    if not rest:
        return ""
    quote = rest[0]
    if quote == "'":
        end = rest.find("'", 1)
        if end < 0:
            _bad_line(where, f"unterminated single quote in the value of {name}")
        _expect_only_comment(rest[end + 1 :], where, name)
        return rest[1:end]
    if quote == '"':
        return _parse_double_quoted(rest, where, name)
    value = rest.split(" #", 1)[0].split("\t#", 1)[0].rstrip()
    if any(char in value for char in "'\""):
        _bad_line(where, f"stray quote in the unquoted value of {name}")
    return value


def _parse_double_quoted(rest: str, where: str, name: str) -> str:
    out: list[str] = []
    index = 1
    while index < len(rest):
        char = rest[index]
        if char == '"':
            _expect_only_comment(rest[index + 1 :], where, name)
            return "".join(out)
        if char == "\\":
            escaped = rest[index + 1 : index + 2]
            if escaped not in _ESCAPES:
                _bad_line(where, f"unknown escape in the value of {name}")
            out.append(_ESCAPES[escaped])
            index += 2
            continue
        out.append(char)
        index += 1
    _bad_line(where, f"unterminated double quote in the value of {name}")


def _expect_only_comment(tail: str, where: str, name: str) -> None:
    tail = tail.strip()
    if tail and not tail.startswith("#"):
        _bad_line(where, f"unexpected text after the quoted value of {name}")


def env_files(
    config_dir: Path,
    cli_paths: Sequence[Path] = (),
    toml_paths: Sequence[str] | None = None,
) -> list[tuple[Path, bool]]:
    """Decide which dotenv files to read, in override order, each with "must exist".

    `--env-path` files must exist, and may lie anywhere: the user named them. The TOML's
    `envPath` and the default `.env`/`.env.local` are read when present, and only from inside
    the config's folder, links followed (decision 73): the config may be someone else's.

    Raises:
        UsageError: an `envPath` entry, or a default file by a link, lies outside the folder.

    """
    if cli_paths:
        return [(_against(config_dir, path), True) for path in cli_paths]
    names = DEFAULT_ENV_FILES if toml_paths is None else tuple(toml_paths)
    for name in names:
        if is_outside_folder(config_dir, name):
            what = "the default env file" if toml_paths is None else "envPath entry"
            raise UsageError(
                f"{what} {name!r} lies outside the config's folder {config_dir} (links "
                "followed): a perstack.toml may only name env files inside its own folder, "
                "or a config you did not write could hand any dotenv file of yours to its "
                "skills. Name the file with --env-path if you mean it"
            )
    return [(_against(config_dir, Path(name)), False) for name in names]


def _against(config_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else config_dir / path


def load_env_files(
    files: Iterable[tuple[Path, bool]], *, warn: Callable[[str], None] | None = None
) -> dict[str, Secret]:
    """Read the dotenv files in order; a later file's key overrides an earlier one.

    `warn` is told about a key set twice within one file (see `parse_dotenv`).

    Raises:
        UsageError: a required file is missing or unreadable.
        EnvFileError: lines of a file are malformed (every one of them).

    """
    merged: dict[str, Secret] = {}
    for path, must_exist in files:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if must_exist:
                raise UsageError(f"env file not found: {path}") from None
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read env file {path}: {type(exc).__name__}") from exc
        merged.update(parse_dotenv(text, source=str(path), warn=warn))
    return merged


@dataclass(frozen=True, slots=True)
class SkillSecrets:
    """The requiredEnv values of one skill (names visible, values wrapped)."""

    skill: str
    values: Mapping[str, Secret]


def resolve_secrets(
    plan: SandboxPlan,
    file_values: Mapping[str, Secret],
    host_env: Mapping[str, str] | None = None,
) -> dict[str, SkillSecrets]:
    """Pick each skill's requiredEnv values; the real environment wins over the files.

    Raises:
        MissingEnvError: naming every missing variable and the skill(s) needing it, before
            anything has started.

    """
    environ = os.environ if host_env is None else host_env
    missing: dict[str, list[str]] = {}
    resolved: dict[str, SkillSecrets] = {}
    for skill in plan.skills:
        values: dict[str, Secret] = {}
        for name in skill.env_names:
            if name in environ:
                values[name] = Secret(environ[name])
            elif name in file_values:
                values[name] = file_values[name]
            else:
                missing.setdefault(name, []).append(skill.name)
        resolved[skill.name] = SkillSecrets(skill=skill.name, values=values)
    if missing:
        raise MissingEnvError(_describe_missing(missing))
    return resolved


def _describe_missing(missing: Mapping[str, list[str]]) -> str:
    parts = [
        f"{name} (needed by {', '.join(repr(skill) for skill in skills)})"
        for name, skills in sorted(missing.items())
    ]
    noun = "variable" if len(parts) == 1 else "variables"
    return (
        f"missing environment {noun}: {'; '.join(parts)}. Set them in the environment or in an "
        "env file (--env-path, envPath in perstack.toml, or .env/.env.local next to it)"
    )


def skill_environment(
    secrets: SkillSecrets,
    *,
    proxy_env: Mapping[str, str],
    home: str,
) -> dict[str, str]:
    """Build the exact environment of one skill process (this is where values are revealed).

    Raises:
        UsageError: a requiredEnv name would override a variable the sandbox sets itself
            (config validation rejects such names; this is the last line of defence).

    """
    # TMPDIR is the private home too: /tmp is shared by every skill in the sandbox, so a
    # hostile skill could plant files or links where another expects its scratch files.
    base = {"PATH": MINIMAL_PATH, "HOME": home, "TMPDIR": home, "LANG": DEFAULT_LANG, **proxy_env}
    clashes = sorted(set(base) & set(secrets.values))
    if clashes:
        raise UsageError(
            f"skill {secrets.skill!r}: requiredEnv may not name {', '.join(clashes)} "
            "(the sandbox sets them)"
        )
    return {**base, **{name: value.reveal() for name, value in secrets.values.items()}}


def host_secrets(
    config: PerstackConfig,
    *,
    env_paths: Iterable[Path] = (),
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Secret]:
    """Return secret values the way the CLI finds them: env files, then the host environment.

    The files are `env_paths` if given (each must exist), else the config's `envPath`, else
    `.env` then `.env.local` next to perstack.toml; a later file overrides an earlier one, and
    the environment (`environ`, default `os.environ`) overrides every file. Pass the result as
    `open_run(..., secrets=...)`; only the names a skill requires ever reach it. `warn` is told
    about a key set twice within one file.

    Raises:
        UsageError: an env file is missing or unreadable, or one the config names (or a
            default one, by a link) lies outside the config's folder (see `env_files`).
        EnvFileError: lines of an env file are malformed (every one named with its line
            number, never a value).

    """
    files = env_files(Path(config.config_dir), tuple(env_paths), list(config.env_path) or None)
    values = load_env_files(files, warn=warn)
    values.update({name: Secret(value) for name, value in (environ or os.environ).items()})
    return values


def env_file_secrets(*paths: Path) -> dict[str, Secret]:
    """Return the values of dotenv files (each must exist); a later file overrides an earlier.

    Raises:
        UsageError: a file is missing or unreadable.
        EnvFileError: lines of a file are malformed (each named with its line, never a value).

    """
    return load_env_files((path, True) for path in paths)
