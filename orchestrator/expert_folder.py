"""The Expert's folder, checked before it is mounted at /expert: what to hide, what skills can read.

The folder holds perstack.toml and, usually, the env files with every skill's secrets. The
sandbox sees it read-only, so each env file is covered by an empty read-only file (the run's
`cover`, bound over it) at its place under /expert. The plan names the env files as configured
(`plan.hidden`); this walk, run when a run starts, adds what only the filesystem knows:

- the real place of an env file that is a symbolic link into the folder (a link itself needs
  no cover: it resolves inside the sandbox, to the covered target or to nothing);
- every other name of an env file in the folder (hard links: same device and inode);
- every other regular file whose name starts with `.env` (`.env.production`, `.envrc`...).

Skills run as uids 10001 and up, neither owner nor group of host files, so only the "others"
permission bits let them in. When a skill works in /expert (a local command, or an argument
naming /expert), every folder must be enterable and listable by others and every file readable,
or the run is refused before anything starts, naming the path and why. Env files are not
checked (they are hidden anyway). The walk never follows a link and stops at `MAX_ENTRIES`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final

from orchestrator.errors import UsageError
from orchestrator.plan import EXPERT_DIR, HIDDEN_NAME_PREFIX

if TYPE_CHECKING:
    from orchestrator.plan import SandboxPlan

# Every entry is looked at once (an lstat): ~100k entries take well under a second. A larger
# folder cannot be checked for secrets in reasonable time, so it is refused, not mounted.
MAX_ENTRIES: Final = 100_000
MAX_REPORTED: Final = 10  # unreadable paths named in one error
SKILL_UIDS: Final = "uids 10001 and up"


@dataclass(frozen=True, slots=True)
class FolderCheck:
    """The outcome of checking the Expert's folder."""

    masks: tuple[str, ...]  # container paths under /expert to cover with an empty file
    entries: int  # how many entries the walk looked at


@dataclass
class _Walk:
    root: Path
    prefix: str
    env_inodes: set[tuple[int, int]]
    check_readable: bool
    masks: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)
    entries: int = 0


def uses_expert_folder(plan: SandboxPlan) -> bool:
    """Tell whether a skill works in /expert: a local command, or an argument naming it."""
    return any(
        launch.kind == "local" or any(arg.startswith(EXPERT_DIR) for arg in launch.argv)
        for launch in plan.skills
    )


def check_expert_folder(plan: SandboxPlan) -> FolderCheck:
    """Walk the Expert's folder: find every file to hide, refuse files skills cannot read.

    Raises:
        UsageError: the folder is missing, too large to check, cannot be walked, or (when a
            skill works in /expert) holds a folder or file the skills' uids cannot read.

    """
    root = Path(plan.config_dir).resolve()
    try:
        root_stat = root.stat()
    except OSError as exc:
        raise UsageError(f"the Expert's folder {root} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_stat.st_mode):
        raise UsageError(f"the Expert's folder {root} is not a folder")
    walk = _Walk(root, EXPERT_DIR, set(), check_readable=uses_expert_folder(plan))
    for hidden in plan.hidden:
        _add_env_file(walk, Path(hidden.path))
    _check_mode(walk, root, root_stat)
    entries = _list_reachable(root) if root_stat.st_mode & stat.S_IXOTH else []
    walk.entries = len(entries)
    # Links first: a `.env*` link names an env file, whose other (hard-linked) names come after.
    for path, found in entries:
        if stat.S_ISLNK(found.st_mode) and path.name.startswith(HIDDEN_NAME_PREFIX):
            _add_env_file(walk, path)
    for path, found in entries:
        _visit(walk, path, found)
    if walk.unreadable:
        raise UsageError(_describe_unreadable(root, walk.unreadable))
    return FolderCheck(masks=tuple(sorted(walk.masks)), entries=walk.entries)


def _add_env_file(walk: _Walk, path: Path) -> None:
    try:
        found = path.stat()
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, unreadable, or a link loop: nothing to cover
        return
    if not stat.S_ISREG(found.st_mode):
        return
    walk.env_inodes.add((found.st_dev, found.st_ino))
    if real.is_relative_to(walk.root) and real != walk.root:
        walk.masks.add(_target(walk, real))


def _target(walk: _Walk, path: Path) -> str:
    return str(PurePosixPath(walk.prefix) / path.relative_to(walk.root).as_posix())


def _list_reachable(root: Path) -> list[tuple[Path, os.stat_result]]:
    """List every entry under `root` a skill could reach: inside folders others may enter.

    Raises:
        UsageError: too many entries, or a folder the skills may enter cannot be listed.

    """
    found: list[tuple[Path, os.stat_result]] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = [(Path(e.path), e.stat(follow_symlinks=False)) for e in entries]
        except OSError as exc:
            raise UsageError(
                f"cannot check the Expert's folder: {folder}: {exc.strerror}; perstack-sandbox "
                "looks at every file in it before mounting it (env files to hide)"
            ) from exc
        found += listed
        if len(found) > MAX_ENTRIES:
            raise UsageError(
                f"the Expert's folder {root} holds more than {MAX_ENTRIES} entries: too many "
                "to check for env files before mounting it; keep the Expert in a folder of "
                "its own"
            )
        # Never through a link; only where a skill's uid may pass (others' x bit).
        pending += [
            path
            for path, entry in listed
            if stat.S_ISDIR(entry.st_mode) and entry.st_mode & stat.S_IXOTH
        ]
    return found


def _visit(walk: _Walk, path: Path, found: os.stat_result) -> None:
    mode = found.st_mode
    if stat.S_ISLNK(mode):
        return  # resolved inside the sandbox: to a covered file, or to nothing of the host
    if stat.S_ISREG(mode) and (
        path.name.startswith(HIDDEN_NAME_PREFIX) or (found.st_dev, found.st_ino) in walk.env_inodes
    ):
        walk.masks.add(_target(walk, path))
        return
    _check_mode(walk, path, found)


def _is_enterable(found: os.stat_result) -> bool:
    wanted = stat.S_IROTH | stat.S_IXOTH
    return found.st_mode & wanted == wanted


def _check_mode(walk: _Walk, path: Path, found: os.stat_result) -> None:
    if not walk.check_readable or len(walk.unreadable) >= MAX_REPORTED:
        return
    mode = found.st_mode
    where = f"{path} (mode {stat.S_IMODE(mode):04o}, owner uid {found.st_uid})"
    if stat.S_ISDIR(mode) and not _is_enterable(found):
        walk.unreadable.append(f"{where}: a folder others cannot list and enter (needs o+rx)")
    elif stat.S_ISREG(mode) and not mode & stat.S_IROTH:
        walk.unreadable.append(f"{where}: a file others cannot read (needs o+r)")


def _describe_unreadable(root: Path, unreadable: list[str]) -> str:
    lines = "\n".join(f"  {line}" for line in unreadable)
    more = "\n  ... (only the first ones are listed)" if len(unreadable) >= MAX_REPORTED else ""
    return (
        f"the skills cannot read the Expert's folder {root}: they run as {SKILL_UIDS}, "
        "neither owner nor group of host files, so only the permissions for others count:\n"
        f"{lines}{more}\n"
        f"Make it readable (chmod -R o+rX {root}), or move private files out of it"
    )
