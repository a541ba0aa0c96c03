"""The Expert's folder in a started sandbox: mounted only when a skill needs it, `.git` hidden."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from engine_support import run_in

from perstack_sandbox import state
from perstack_sandbox.engine import open_sandbox

if TYPE_CHECKING:
    from collections.abc import Callable

    from perstack_sandbox.plan import SandboxPlan

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("state_home")]

# What a skill finds at /expert: whether it is a mount, what it lists, what each file holds.
LOOK = r"""
import json, os, sys
mounted = any(line.split()[4] == "/expert" for line in open("/proc/self/mountinfo"))
def read(path):
    try:
        return open(path).read()
    except OSError as exc:
        return type(exc).__name__
git = "/expert/.git"
seen = {"mounted": mounted, "listed": sorted(os.listdir("/expert"))}
seen["git_listed"] = sorted(os.listdir(git)) if os.path.isdir(git) else None
seen |= {path: read(path) for path in sys.argv[1:]}
print(json.dumps(seen))
"""


def _checkout(folder: Path) -> str:
    """Write a CI-like checkout: a token in `.git/config`, a submodule's `.git` file."""
    token = f"ghs_canary{secrets.token_hex(12)}"
    (folder / ".git").mkdir(mode=0o755)
    (folder / ".git" / "config").write_text(
        f'[http "https://example.test/"]\n\textraheader = AUTHORIZATION: basic {token}\n',
        encoding="utf-8",
    )
    (folder / "lib").mkdir(mode=0o755)
    (folder / "lib" / ".git").write_text(f"gitdir: ../.git/modules/lib {token}\n")
    (folder / "README").write_text("readable\n", encoding="utf-8")
    for path in (folder / ".git" / "config", folder / "lib" / ".git", folder / "README"):
        path.chmod(0o644)
    folder.chmod(0o755)
    return token


async def _look(plan: SandboxPlan, image: str, *paths: str) -> dict[str, object]:
    async with open_sandbox(plan, image=image, run=state.create_run(plan.expert)) as sandbox:
        result = await run_in(sandbox, ["python3", "-c", LOOK, *paths])
    assert result.code == 0, result.stderr
    seen = result.json()
    assert isinstance(seen, dict)
    return seen


async def test_a_plan_without_the_folder_mount_shows_the_skills_nothing_of_it(
    plan_factory: Callable[..., SandboxPlan], empty_expert_image: str
) -> None:
    """With no skill working in /expert (no mount in the plan), /expert is the image's empty one.

    Fails when: the engine mounts the folder whatever the plan says (seen by hand,
    2026-11-30, with `expert_mounted=True` forced in `_sandbox`: /expert was a mount that
    listed the checkout and held the token).
    """
    plan = plan_factory().model_copy(update={"mounts": ()})
    token = _checkout(Path(plan.config_dir))
    seen = await _look(plan, empty_expert_image, "/expert/.git/config")
    assert (seen["mounted"], seen["listed"]) == (False, [])
    assert token not in json.dumps(seen)


async def test_every_git_under_a_mounted_folder_is_covered_empty(
    plan_factory: Callable[..., SandboxPlan], empty_expert_image: str
) -> None:
    """`.git/config` cannot be opened, `.git` lists nothing, a `.git` file reads as empty.

    Fails when: `_mounts` leaves out the folder masks (seen by hand, 2026-11-30: `.git/config`
    gave the token and `.git` listed `config`).
    """
    plan = plan_factory()
    token = _checkout(Path(plan.config_dir))
    seen = await _look(
        plan, empty_expert_image, "/expert/.git/config", "/expert/lib/.git", "/expert/README"
    )
    assert (seen["mounted"], seen["git_listed"]) == (True, [])
    assert seen["/expert/.git/config"] == "FileNotFoundError"
    assert (seen["/expert/lib/.git"], seen["/expert/README"]) == ("", "readable\n")
    assert token not in json.dumps(seen)
