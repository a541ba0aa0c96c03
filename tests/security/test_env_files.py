"""Env files: no skill reads one under /expert, whatever name, link or origin it has.

The hostile Expert's folder holds world-readable env files with canaries (see `support`): the
default `.env` and `.env.local`, the TOML's envPath `secrets/app.env`, the `--env-path` file
`cli.env` (the one this run reads), another `config/.env.production`, a hard link `notes.txt`
to `.env`, and a link `.env.shared` to `secrets/shared.txt`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support import ENV_LINK, HARD_LINK, HIDDEN_TARGETS

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

READ_ALL = (
    "import os\nseen = {}\n"
    "for root, dirs, files in os.walk('/expert'):\n"
    "    for name in files:\n"
    "        path = os.path.join(root, name)\n"
    "        try: seen[path] = open(path, 'rb').read().decode('latin-1')\n"
    "        except OSError as exc: seen[path] = outcome_of(exc)\n"
    "emit(seen)"
)


async def test_every_env_file_reads_as_empty_whatever_its_name_or_origin(
    hostile: Hostile,
) -> None:
    """Each env file (default, envPath, --env-path, other `.env*`) and each other name is empty.

    The run's meta.json names exactly the covers. Fails when: the covers are not mounted
    (checked by hand with a pytest plugin dropping them from `_containers._mounts`: every path
    gave its canary), or a kind of env file is missed (checked by hand with
    `expert_folder._add_env_file` a no-op, so only `.env*` names are covered: `secrets/app.env`,
    `cli.env`, the hard link `notes.txt`, `.env.shared` and its target gave theirs).
    """
    paths = sorted(hostile.env_canaries)
    code = (
        f"seen = {{}}\nfor name in {paths!r}:\n"
        "    try: seen[name] = open('/expert/' + name).read()\n"
        "    except OSError as exc: seen[name] = outcome_of(exc)\n"
        "emit(seen)"
    )
    assert await hostile.probe(code) == dict.fromkeys(paths, "")
    assert {HARD_LINK, ENV_LINK} <= set(paths)
    assert set(hostile.run.read_meta()["hidden"]) == HIDDEN_TARGETS  # type: ignore[arg-type]


async def test_no_file_under_expert_holds_an_env_files_value(hostile: Hostile) -> None:
    """A walk of /expert reads every file and finds none of the env files' values.

    Fails when: any env file, or another name of one, is left uncovered (checked by hand with
    the covers removed: all eight paths held a canary; with `_add_env_file` a no-op: five).
    """
    seen: dict[str, str] = await hostile.probe(READ_ALL)
    assert "/expert/perstack.toml" in seen
    leaked = {
        path: name
        for path, text in seen.items()
        for name, value in hostile.env_canaries.items()
        if value in text
    }
    assert leaked == {}
