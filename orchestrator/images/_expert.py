"""The per-expert image: every npx/uvx package of one Expert, on the base image.

Its tag hashes the base image's id, the package specs, the recipe and, with a lock, every
locked tree's hash (`expert_image_name`), so an unchanged Expert reuses its image.

The per-expert build runs untrusted code (npm install scripts, sdist builds), so it is fenced
like a sandbox (the engine's `build_expert`, passed in as `build`): its RUN steps sit on an
internal network with no host address, whose only way out is a proxy allowing just the
registry hosts derived for this build (`_registries`), with its decisions in
`builds/<build-id>/audit.jsonl`; and each package is installed by a non-root uid of its own
that owns only that package's folders (`_recipe`).
Install scripts and sdist builds stay enabled: they are the same author's code the skill runs
anyway, now with no more reach at build time than at run time, and native addons need them.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Final, TypeAlias

from perstack_sandbox import state
from perstack_sandbox.docker_edge import LABEL_BASE, LABEL_KIND, LABEL_PACKAGES, LABEL_RECIPE
from perstack_sandbox.errors import EngineError, ImageBuildError
from perstack_sandbox.images import _build, _locked, _recipe
from perstack_sandbox.images._build import no_progress
from perstack_sandbox.images._cache import (
    copy_recipe,
    ensure_base_image,
    image_id,
    recipe,
    tag_digest,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from perstack_sandbox.lock import ExpertLock, JsonObject
    from perstack_sandbox.plan import PackageSpec, SandboxPlan

EXPERT_REPO: Final = "perstack-sandbox/expert"
PACKAGES_MARKER: Final = "PERSTACK_PACKAGES="
LABEL_LOCKED: Final = "perstack-sandbox.locked"  # "1" when built from perstack-sandbox.lock


def expert_dockerfile(base: str, packages: Sequence[PackageSpec], *, locked: bool = False) -> str:
    """Return the per-expert Dockerfile (see `_recipe`): one uid per package install.

    Raises:
        ImageBuildError: too many packages.

    """
    return _recipe.expert_dockerfile(base, packages, locked=locked)


def expert_image_name(
    plan: SandboxPlan, base_id: str, material: Sequence[JsonObject] | None = None
) -> str:
    """Return the per-expert tag: a hash of the base image id, package specs and recipe.

    With a lock, its packages' `material` (every hash of every tree) is hashed in too, so a
    changed lock never reuses an image built from another.
    """
    packages = [p.model_dump(mode="json") for p in plan.packages]
    parts: list[str | bytes] = [
        base_id,
        json.dumps(packages, sort_keys=True),
        expert_dockerfile("BASE", plan.packages, locked=material is not None),
        recipe("expert-finalize.py"),
    ]
    if material is not None:
        parts.append(json.dumps(list(material), sort_keys=True))
    return f"{EXPERT_REPO}:{tag_digest(*parts)}"


ExpertBuild: TypeAlias = "Callable[[Path, str, SandboxPlan, Callable[[str], None]], str]"
"""Builds a prepared per-expert context (folder, tag, plan, progress) and returns the image id.

The engine's fenced build (`engine.build_expert`) is the one a run uses: package installs run
untrusted code, so they run in a sandbox-like fence, which is the engine's to make.
"""


def ensure_expert_image(
    plan: SandboxPlan,
    *,
    build: ExpertBuild,
    host_ca: bool | None = None,
    progress: Callable[[str], None] = no_progress,
    lock: ExpertLock | None = None,
) -> str:
    """Return the per-expert image's tag; when missing, `build` it (the base image too).

    `build` returns the image untagged; it is tagged only together with its labels, so a
    stopped build leaves no tag behind.

    Raises:
        ImageBuildError: a build step failed (the error holds its output).
        EngineError: the engine, npm or pip failed.

    """
    base = ensure_base_image(host_ca=host_ca, progress=progress)
    base_id = image_id(base)
    if base_id is None:  # pragma: no cover - removed between the two calls
        raise EngineError(f"{base} vanished during the build")
    material = _locked.locked_material(plan, lock) if lock is not None else None
    if lock is not None and lock.base_image not in {"", base_id}:
        # The trees are pinned by hash whatever the base; a native addon built at install
        # time may still differ, so the reviewer's base is named next to this one.
        progress(
            f"note: the lock was resolved against base {lock.base_image[:19]}, not {base_id[:19]}"
        )
    name = expert_image_name(plan, base_id, material)
    if image_id(name) is not None:
        return name
    progress(f"building {name} for expert {plan.expert} ({len(plan.packages)} packages)")
    lines: list[str] = []

    def collect(line: str) -> None:
        lines.append(line)
        progress(line)

    with state.build_context("expert") as context:
        dockerfile = _recipe.expert_dockerfile(
            base, plan.packages, locked=material is not None, build_id=secrets.token_hex(8)
        )
        (context / "Dockerfile").write_text(dockerfile)
        if material is not None:
            _locked.write_lock_context(context, plan, material)
        copy_recipe("expert-finalize.py", context / "finalize.py")
        manifest = [p.model_dump(mode="json") for p in plan.packages]
        (context / "manifest.json").write_text(json.dumps(manifest))
        built = build(context, name, plan, collect)
    resolved = _build.last_marker(lines, PACKAGES_MARKER)
    if resolved is None:
        raise ImageBuildError(f"building {name}: the package versions were not reported")
    _build.label_image(
        built,
        tag=name,
        labels={
            LABEL_KIND: "expert",
            LABEL_RECIPE: name.rsplit(":", 1)[1],
            LABEL_PACKAGES: resolved,
            LABEL_BASE: base,
            _locked.LABEL_TREES: _build.last_marker(lines, _locked.TREES_MARKER) or "{}",
            LABEL_LOCKED: "1" if material is not None else "0",
        },
    )
    return name


def resolved_packages(name: str) -> list[dict[str, str]]:
    """Return the package versions recorded in an expert image's label.

    Raises:
        EngineError: the image is missing or the engine could not be reached.

    """
    loaded = json.loads(_build.image_label(name, LABEL_PACKAGES) or "[]")
    return loaded if isinstance(loaded, list) else []
