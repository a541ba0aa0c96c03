"""The Expert's folder, checked before it is mounted at /expert: what to hide, what skills can read.

The folder is mounted only when a skill works in /expert (a local command, or an argument
naming /expert; decision 73), and is walked only then. It holds perstack.toml and, usually,
the env files with every skill's secrets. The sandbox sees it read-only, so each env file is
covered by an empty read-only file (the run's `cover`, bound over it) at its place under
/expert. The plan names the env files as configured
(`plan.hidden`); this walk, run when a run starts, adds what only the filesystem knows:

- the real place of an env file that is a symbolic link into the folder (a link itself needs
  no cover: it resolves inside the sandbox, to the covered target or to nothing);
- every other name of an env file in the folder (hard links: same device and inode);
- every other regular file whose name starts with `.env` (`.env.production`, `.envrc`...).
- every `.git` at any depth: a folder is covered by an empty read-only one, a file (a
  worktree's or submodule's pointer) by the cover file. CI checkouts keep the job's token in
  `.git/config`. A `.git` folder is not walked.

Skills run as uids 10001 and up, neither owner nor group of host files, so only the "others"
permission bits let them in. When a skill works in /expert (a local command, or an argument
naming /expert), every file must be readable by others and every folder listable and
enterable, or the run is refused before anything starts, naming each path and why. Env files
are not checked (they are hidden anyway), nor is a private folder that holds nothing but env
files (a 0700 `secrets/`), nor the state directory if it lies in the folder. The walk never
follows a link and stops at `MAX_ENTRIES`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final

from perstack_sandbox import state
from perstack_sandbox.errors import UsageError
from perstack_sandbox.plan._plan import EXPERT_DIR, HIDDEN_NAME_PREFIX, needs_expert_folder

if TYPE_CHECKING:
    from perstack_sandbox.plan._plan import SandboxPlan

# Every entry is looked at once (one lstat each): 100k entries took about 0.8 s on a loaded
# 2-core host. A larger folder cannot be checked for secrets in reasonable time, so it is
# refused, not mounted.
MAX_ENTRIES: Final = 100_000
MAX_REPORTED: Final = 10  # unreadable paths named in one error
GIT_NAME: Final = ".git"  # a repository's folder (or, in a worktree, its pointer file)
SKILL_UIDS: Final = "uids 10001 and up"  # the engine's SKILL_UID_FIRST (a test holds them equal)


@dataclass(frozen=True, slots=True)
class FolderCheck:
    """The outcome of checking the Expert's folder."""

    masks: tuple[str, ...]  # container paths under /expert to cover with an empty file
    entries: int  # how many entries the walk looked at
    folder_masks: tuple[str, ...] = ()  # `.git` folders under /expert to cover with an empty one


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str  # plain strings: Path objects tripled the time of a 100k-entry walk
    name: str
    found: os.stat_result
    is_reachable: bool  # every folder above it lets others pass: a skill can get to it


@dataclass
class _Walk:
    root: Path
    env_inodes: set[tuple[int, int]] = field(default_factory=set)
    masks: set[str] = field(default_factory=set)
    unlisted: set[str] = field(default_factory=set)  # folders closed to us and to skills
    git: list[_Entry] = field(default_factory=list)  # every `.git`, folder or file: not walked


def uses_expert_folder(plan: SandboxPlan) -> bool:
    """Tell whether a skill works in /expert: a local command, or an argument naming it.

    An argument counts wherever /expert appears in it (`--root=/expert/data` too). Only then
    is the folder mounted at all (`SandboxPlan.expert_mount`).
    """
    return needs_expert_folder(plan.skills)


def check_expert_folder(plan: SandboxPlan) -> FolderCheck:
    """Walk the Expert's folder: find every file to hide, refuse files skills cannot read.

    A plan that does not mount the folder (no skill works in /expert) is not walked: nothing
    of it reaches the sandbox.

    Raises:
        UsageError: the folder is missing, too large to check, cannot be walked, or (when a
            skill works in /expert) holds a folder or file the skills' uids cannot read.

    """
    if plan.expert_mount is None:
        return FolderCheck(masks=(), entries=0)
    root = Path(plan.config_dir).resolve()
    try:
        root_stat = root.stat()
    except OSError as exc:
        raise UsageError(f"the Expert's folder {root} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_stat.st_mode):
        raise UsageError(f"the Expert's folder {root} is not a folder")
    walk = _Walk(root)
    for hidden in plan.hidden:
        _add_env_file(walk, Path(hidden.path))
    entries = _list(walk, root_stat)
    # Links first: a `.env*` link names an env file, whose other (hard-linked) names come after.
    for entry in entries:
        if stat.S_ISLNK(entry.found.st_mode) and entry.name.startswith(HIDDEN_NAME_PREFIX):
            _add_env_file(walk, Path(entry.path))
    env_files = {e.path for e in entries if _is_env(walk, e)}
    walk.masks |= {
        _target(walk, Path(e.path)) for e in entries if e.is_reachable and e.path in env_files
    }
    folder_masks = _hide_git(walk)
    if uses_expert_folder(plan):
        top = _Entry(str(root), root.name, root_stat, is_reachable=True)
        others = [e for e in entries if e.path not in env_files and e.name != GIT_NAME]
        unreadable = _unreadable(top, others, walk.unlisted)
        if unreadable:
            raise UsageError(_describe_unreadable(root, unreadable))
    masks, folders = tuple(sorted(walk.masks)), tuple(sorted(folder_masks))
    return FolderCheck(masks=masks, entries=len(entries), folder_masks=folders)


def _hide_git(walk: _Walk) -> set[str]:
    """Cover every reachable `.git` file (in `walk.masks`); return the `.git` folders to cover.

    A checkout's `.git` holds what CI keeps there: the job's token in `.git/config`. A `.git`
    that is a link needs no cover: it resolves inside the sandbox, as an env file's link does.
    """
    found = [e for e in walk.git if e.is_reachable]
    walk.masks |= {_target(walk, Path(e.path)) for e in found if stat.S_ISREG(e.found.st_mode)}
    folders = {_target(walk, Path(e.path)) for e in found if stat.S_ISDIR(e.found.st_mode)}
    # A file inside a covered folder is hidden with it; its own cover would have no mountpoint.
    walk.masks = {m for m in walk.masks if not any(m.startswith(f"{f}/") for f in folders)}
    return folders


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


def _is_env(walk: _Walk, entry: _Entry) -> bool:
    found = entry.found
    return stat.S_ISREG(found.st_mode) and (
        entry.name.startswith(HIDDEN_NAME_PREFIX) or (found.st_dev, found.st_ino) in walk.env_inodes
    )


def _target(walk: _Walk, path: Path) -> str:
    return str(PurePosixPath(EXPERT_DIR) / path.relative_to(walk.root).as_posix())


def _list(walk: _Walk, root_stat: os.stat_result) -> list[_Entry]:
    """List every entry under the folder, never through a link, marking what skills reach.

    Raises:
        UsageError: too many entries, or a folder the skills can reach cannot be listed.

    """
    found: list[_Entry] = []
    # The state directory may lie in the folder (the folder is the home, say): it is ours, and
    # private by its modes (`state`), so it is neither walked nor reported.
    skipped = str(state.state_dir().resolve())
    pending = [(str(walk.root), bool(root_stat.st_mode & stat.S_IXOTH))]
    while pending:
        folder, is_reachable = pending.pop()
        try:
            with os.scandir(folder) as listing:
                listed = [
                    _Entry(e.path, e.name, e.stat(follow_symlinks=False), is_reachable)
                    for e in listing
                ]
        except OSError as exc:
            if not is_reachable:  # closed to the skills too: nothing in it to hide from them
                walk.unlisted.add(folder)
                continue
            raise UsageError(
                f"cannot check the Expert's folder: {folder}: {exc.strerror}; perstack-sandbox "
                "looks at every file in it before mounting it (env files to hide)"
            ) from exc
        found += listed
        if len(found) > MAX_ENTRIES:
            raise UsageError(
                f"the Expert's folder {walk.root} holds more than {MAX_ENTRIES} entries: too "
                "many to check for env files before mounting it; keep the Expert in a folder "
                "of its own"
            )
        walk.git += [e for e in listed if e.name == GIT_NAME]
        pending += [
            (e.path, is_reachable and bool(e.found.st_mode & stat.S_IXOTH))
            for e in listed
            if stat.S_ISDIR(e.found.st_mode) and e.path != skipped and e.name != GIT_NAME
        ]
    return found


def _unreadable(root: _Entry, entries: list[_Entry], unlisted: set[str]) -> list[str]:
    """Say which reachable files others cannot read, and which closed folders hold any.

    `entries` leaves out the env files: a closed folder matters only when it holds something
    else (or could not be listed).
    """
    holding = set(unlisted)
    for entry in entries:
        if not stat.S_ISDIR(entry.found.st_mode):
            folder = entry.path.rpartition(os.sep)[0]  # a string op: Path is slow at 100k
            while folder not in holding and len(folder) >= len(root.path):
                holding.add(folder)
                folder = folder.rpartition(os.sep)[0]
    problems = []
    for entry in (root, *entries):
        mode = entry.found.st_mode
        if not entry.is_reachable:
            continue
        if stat.S_ISDIR(mode) and not _is_open(mode) and entry.path in holding:
            problems.append(f"{_where(entry)}: a folder others cannot list and enter (needs o+rx)")
        elif stat.S_ISREG(mode) and not mode & stat.S_IROTH:
            problems.append(f"{_where(entry)}: a file others cannot read (needs o+r)")
    return problems


def _where(entry: _Entry) -> str:
    mode, owner = stat.S_IMODE(entry.found.st_mode), entry.found.st_uid
    return f"{entry.path} (mode {mode:04o}, owner uid {owner})"


def _is_open(mode: int) -> bool:
    wanted = stat.S_IROTH | stat.S_IXOTH
    return mode & wanted == wanted


def _describe_unreadable(root: Path, unreadable: list[str]) -> str:
    lines = "\n".join(f"  {line}" for line in unreadable[:MAX_REPORTED])
    more = (
        f"\n  ... and {len(unreadable) - MAX_REPORTED} more"
        if len(unreadable) > MAX_REPORTED
        else ""
    )
    return (
        f"the skills cannot read the Expert's folder {root}: they run as {SKILL_UIDS}, "
        "neither owner nor group of host files, so only the permissions for others count:\n"
        f"{lines}{more}\n"
        f"Make it readable (chmod -R o+rX {root}), or move private files out of it"
    )
