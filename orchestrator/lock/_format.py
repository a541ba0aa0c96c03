"""`perstack-sandbox.lock`: the file, its deterministic rendering, and staleness.

The lock sits next to perstack.toml and is JSON rendered one way only (sorted keys, two-space
indent, one trailing newline), so the same resolution always writes the same bytes and a
review reads a plain diff. Per expert it holds:

```
experts.<expert>.source        digest of what perstack.toml asks for (the staleness check)
experts.<expert>.baseImage     the base image id the packages were resolved against
experts.<expert>.skills.<skill>.package   manager, name, exact version, requested spec,
                                          and the installed tree's integrity:
                                          npm: its package.json and package-lock.json
                                          uv:  a hashed requirement set (one line each)
experts.<expert>.skills.<skill>.tools     each tool's name, title, description, annotations,
                                          input and output schema
```
Version 2 added `title` and `annotations` to the pinned fields (decision 74): the hints a
client may act on without asking (`readOnlyHint`, `destructiveHint`) and the name it shows.
A version 1 lock is refused, with what to do, by everything but `lock`, which upgrades it:
each expert it holds keeps its packages, marked `RELIST_KEY` (stale) until `lock` lists its
tools again.
Tools are plain JSON here: only skills and the gateway speak MCP (they turn a listing into
these dictionaries with `skills.pinned_tools`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox.errors import LockError

if TYPE_CHECKING:
    from perstack_sandbox.plan import PackageSpec, SandboxPlan

LOCK_NAME: Final = "perstack-sandbox.lock"
LOCK_VERSION: Final = 2
UPGRADABLE_VERSIONS: Final = (1,)  # pinned tools without title and annotations
RELIST_KEY: Final = "toolsToRelist"  # an expert upgraded from version 1, its tools not yet
TOOL_FIELDS: Final = ("name", "title", "description", "annotations", "inputSchema", "outputSchema")

JsonObject = dict[str, Any]


def lock_path(config_dir: str | Path) -> Path:
    """Return where the lock of the perstack.toml in `config_dir` lives."""
    return Path(config_dir) / LOCK_NAME


def render_lock(lock: JsonObject) -> str:
    """Render a lock the one deterministic way: sorted keys, indent 2, trailing newline."""
    return json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def lock_digest(text: str) -> str:
    """Return the digest of a rendered lock (`sha256:<hex>`): what `plan --json` carries."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def empty_lock() -> JsonObject:
    """Return a lock with no expert yet."""
    return {"lockfileVersion": LOCK_VERSION, "experts": {}}


def read_lock(path: Path, *, upgrade: bool = False) -> JsonObject | None:
    """Return the parsed lock at `path`, or None when there is none.

    With `upgrade` (only `lock` asks), a version 1 lock comes back as version 2 with every
    expert marked `RELIST_KEY`: its packages stay pinned, its tools must be listed again.

    Raises:
        LockError: the file is unreadable, not JSON, or not a lock of this version (a
            version 1 lock says how to upgrade it).

    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"cannot read {path}: {exc}") from exc
    try:
        lock = json.loads(text)
    except ValueError as exc:
        raise LockError(f"{path} is not JSON: {exc}") from exc
    version = lock.get("lockfileVersion") if isinstance(lock, dict) else None
    if version in UPGRADABLE_VERSIONS and not upgrade:
        raise LockError(
            f"{path} is a version {version} lock: it does not pin the tools' title and "
            "annotations, so a skill could turn a tool's readOnlyHint or destructiveHint "
            "around unseen. Run `perstack-sandbox lock` to pin them (it keeps the locked "
            "packages and lists the tools again), then review and commit the diff"
        )
    if not isinstance(lock, dict) or version not in {LOCK_VERSION, *UPGRADABLE_VERSIONS}:
        raise LockError(f"{path} is not a version {LOCK_VERSION} perstack-sandbox lock")
    if not isinstance(lock.get("experts"), dict):
        raise LockError(f"{path} has no `experts` table")
    if version != LOCK_VERSION:
        experts = {
            name: {**entry, RELIST_KEY: True} if isinstance(entry, dict) else entry
            for name, entry in lock["experts"].items()
        }
        lock = {**lock, "lockfileVersion": LOCK_VERSION, "experts": experts}
    return lock


def write_lock(path: Path, lock: JsonObject) -> str:
    """Write `lock` to `path` (rendered deterministically) and return the text written.

    Raises:
        LockError: the file cannot be written.

    """
    text = render_lock(lock)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise LockError(f"cannot write {path}: {exc}") from exc
    return text


def plan_source(plan: SandboxPlan) -> str:
    """Return the digest of what perstack.toml asks of the lock for this expert.

    That is each stdio skill's name, kind and requested package; a change to any of them
    makes the lock stale (`lock --check`). Launch arguments, env names and egress are left
    out: they do not change which bytes are installed, and a change they make to the tools is
    caught by the run's own check against the lock.
    """
    asked = sorted(
        (
            launch.name,
            launch.kind,
            None if launch.package is None else _requested(launch.package),
        )
        for launch in plan.skills
    )
    return "sha256:" + hashlib.sha256(json.dumps(asked).encode()).hexdigest()


def _requested(package: PackageSpec) -> list[str]:
    return [package.manager, package.name, package.version_spec]


@dataclass(frozen=True, slots=True)
class ExpertLock:
    """One expert's entry of the lock, with typed accessors."""

    expert: str
    entry: JsonObject

    @property
    def base_image(self) -> str:
        """The base image id the packages were resolved against."""
        return str(self.entry.get("baseImage", ""))

    def package(self, skill: str) -> JsonObject | None:
        """Return a skill's locked package, or None (a local skill, or not locked)."""
        found = self._skill(skill).get("package")
        return found if isinstance(found, dict) else None

    @property
    def needs_relist(self) -> bool:
        """True when the entry came from a version 1 lock and its tools were not listed since."""
        return bool(self.entry.get(RELIST_KEY))

    def tools(self, skill: str) -> list[JsonObject] | None:
        """Return a skill's pinned tool definitions, or None when the lock has no entry."""
        found = self._skill(skill).get("tools")
        return found if isinstance(found, list) else None

    def _skill(self, skill: str) -> JsonObject:
        skills = self.entry.get("skills")
        found = skills.get(skill) if isinstance(skills, dict) else None
        return found if isinstance(found, dict) else {}


def expert_lock(lock: JsonObject | None, expert: str) -> ExpertLock | None:
    """Return `expert`'s entry of a parsed lock (None when there is no lock or no entry)."""
    if lock is None:
        return None
    entry = lock["experts"].get(expert)
    return ExpertLock(expert, entry) if isinstance(entry, dict) else None


def stale_reasons(lock: JsonObject | None, plan: SandboxPlan) -> list[str]:
    """Say why the lock does not describe `plan` (an empty list: it is current)."""
    entry = expert_lock(lock, plan.expert)
    if entry is None:
        return [f"expert {plan.expert!r} is not in the lock: run `perstack-sandbox lock`"]
    if entry.entry.get("source") == plan_source(plan):
        if entry.needs_relist:
            reason = (
                f"expert {plan.expert!r} was locked by lock version 1, which pins no tool "
                "title or annotations: run `perstack-sandbox lock`"
            )
            return [reason]
        return []
    reasons: list[str] = []
    locked = entry.entry.get("skills") or {}
    for launch in plan.skills:
        held = entry.package(launch.name)
        asked = None if launch.package is None else _requested(launch.package)
        if launch.name not in locked:
            reasons.append(f"skill {launch.name!r} is not in the lock")
        elif (held or {}).get("requested") != asked:
            reasons.append(f"skill {launch.name!r} asks for {_shown(asked)}, locked {_shown(held)}")
    gone = sorted(set(locked) - {launch.name for launch in plan.skills})
    reasons += [f"skill {name!r} is locked but no longer configured" for name in gone]
    return reasons or [f"expert {plan.expert!r}: the skills' kinds changed since the lock"]


def _shown(value: list[str] | JsonObject | None) -> str:
    if value is None:
        return "no package"
    if isinstance(value, dict):
        value = value.get("requested")
        if not isinstance(value, list):
            return "no package"
    manager, name, spec = value
    return f"{manager} {name}{'@' + spec if spec else ''}"
