"""Locked builds: resolve each package's tree in the fence, then install exactly that tree.

Resolution is itself a fenced build (`_recipe.resolve_dockerfile`): npm writes a package-lock
(`--package-lock-only`, no install script runs) and uv compiles a hashed requirement set, each
as the package's own uid; the builder reads the files from the resulting image (a container
created, never started) and removes it. Nothing is resolved on the host.

npm's `resolved` URLs are dropped from the recorded lock: they name the registry the lock was
made with, while `npm ci` fetches `name@version` from the registry the building host is
configured with and checks the recorded `integrity` all the same, so a lock builds anywhere (a
mirror, another network) bit for bit, or fails.

A locked build copies each package's files into its folder and installs with `npm ci` or
`uv pip install --require-hashes`; before any step runs, every package of every tree must
carry a hash (`lock.check_npm_tree`, `lock.check_requirements`).
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox import lock
from perstack_sandbox.errors import ImageBuildError, LockError
from perstack_sandbox.images import _build, _recipe

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from perstack_sandbox.lock import ExpertLock, JsonObject
    from perstack_sandbox.plan import PackageSpec, SandboxPlan

TREES_MARKER: Final = "PERSTACK_TREES="
LABEL_TREES: Final = "perstack-sandbox.trees"  # per package slug: the installed tree's digest
MAX_LOCK_BYTES: Final = 32 * 1024 * 1024  # one package's lock files; a bigger answer is hostile


def locked_material(plan: SandboxPlan, entry: ExpertLock) -> list[JsonObject]:
    """Return each package's locked entry, in plan order, after checking every hash is there.

    Raises:
        LockError: a package of the plan has no entry, or a different one (a stale lock).
        ImageBuildError: a package of a locked tree (named) carries no hash.

    """
    material: list[JsonObject] = []
    for launch in plan.skills:
        if launch.package is None:
            continue
        held = entry.package(launch.name)
        wanted = [launch.package.manager, launch.package.name, launch.package.version_spec]
        if held is None or held.get("requested") != wanted:
            raise LockError(
                f"perstack-sandbox.lock does not lock skill {launch.name!r} of expert "
                f"{plan.expert!r} as configured: run `perstack-sandbox lock {plan.expert}`"
            )
        _check_hashes(launch.package, held)
        material.append(held)
    return material


def _check_hashes(package: PackageSpec, held: JsonObject) -> None:
    files = held.get("files")
    if not isinstance(files, dict):
        raise ImageBuildError(f"the lock of {package.manager} package {package.name} has no files")
    if package.manager == "npm":
        lock.check_npm_tree(package.name, files.get("package-lock.json"))
    else:
        lines = files.get("requirements.txt")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ImageBuildError(f"the lock of PyPI package {package.name} has no requirements")
        lock.check_requirements(package.name, lines)


def write_lock_context(context: Path, plan: SandboxPlan, material: list[JsonObject]) -> None:
    """Write each package's lock files into the build context's `lock/<slug>/`."""
    for package, held in zip(plan.packages, material, strict=True):
        folder = context / _recipe.LOCK_CONTEXT / package.slug
        folder.mkdir(parents=True)
        for name, content in held["files"].items():
            if name.endswith(".json"):
                text = json.dumps(content, indent=2, sort_keys=True) + "\n"
            else:
                text = "\n".join(content) + "\n"
            (folder / name).write_text(text, encoding="utf-8")


def resolve_packages(
    plan: SandboxPlan,
    base: str,
    build: Callable[[Path, Callable[[str], None]], str],
    context: Path,
) -> dict[str, JsonObject]:
    """Resolve every package of `plan` in a fenced build; return each skill's lock entry.

    `build(context, collect)` runs the fenced build of `context` (the engine's). The image it
    leaves is removed: only the printed lock files matter.

    Raises:
        ImageBuildError: a resolution failed, or its output was not a lock.
        EngineError: the engine, the fence or the registries failed.

    """
    nonce = secrets.token_hex(8)
    (context / "Dockerfile").write_text(
        _recipe.resolve_dockerfile(base, plan.packages, nonce=nonce)
    )
    lines: list[str] = []
    image = build(context, lines.append)
    found: dict[str, JsonObject] = {}
    try:
        for launch in plan.skills:
            package = launch.package
            if package is None:
                continue
            folder = _recipe.package_dirs(package)[0]
            files = _build.image_files(image, folder, limit=MAX_LOCK_BYTES)
            found[launch.name] = _entry(package, files)
    finally:
        _build.remove_image(image)
    return found


def _entry(package: PackageSpec, files: dict[str, bytes]) -> JsonObject:
    requested = [package.manager, package.name, package.version_spec]
    try:
        if package.manager == "npm":
            manifest = json.loads(files["package.json"])
            tree = json.loads(files["package-lock.json"])
            _drop_locations(tree)
            version = tree["packages"][f"node_modules/{package.name}"]["version"]
            recorded: JsonObject = {"package.json": manifest, "package-lock.json": tree}
        else:
            lines = files["requirements.txt"].decode().splitlines()
            version = _pinned_version(package.name, lines)
            recorded = {"requirements.txt": [line.rstrip() for line in lines if line.strip()]}
    except (KeyError, ValueError, TypeError) as exc:
        raise ImageBuildError(f"resolving {package.name}: the lock files are incomplete") from exc
    return {
        "manager": package.manager,
        "name": package.name,
        "version": str(version),
        "requested": requested,
        "files": recorded,
    }


def _drop_locations(tree: Any) -> None:  # noqa: ANN401 - parsed JSON
    """Remove `resolved` URLs: a lock names bytes (integrity), not a registry."""
    for entry in (tree.get("packages") or {}).values():
        if isinstance(entry, dict):
            entry.pop("resolved", None)


def _pinned_version(name: str, lines: list[str]) -> str:
    wanted = _normalise(name)
    for entry in lock.requirement_entries(lines):
        requirement = entry.split()[0]
        found, _, version = requirement.partition("==")
        if _normalise(found.split("[")[0]) == wanted:
            return version.split(";")[0]
    raise ValueError(name)


def _normalise(name: str) -> str:
    return "-".join(part for part in name.lower().replace("_", "-").replace(".", "-").split("-"))


def tree_digests(name: str) -> dict[str, str]:
    """Return the installed trees' digests recorded on an expert image (slug -> digest).

    Raises:
        EngineError: the image is missing or the engine could not be reached.

    """
    loaded = json.loads(_build.image_label(name, LABEL_TREES) or "{}")
    return loaded if isinstance(loaded, dict) else {}
