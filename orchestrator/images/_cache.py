"""The images of a sandbox, each cached under a content-hash tag.

```
debian:trixie-slim            stock name; bootstrapped with debootstrap when it cannot be pulled
├── perstack-sandbox/base     Node.js (NODE_USE_ENV_PROXY), npm, Python 3, uv, skill users, CA
│   └── perstack-sandbox/expert:<hash>   + every npx/uvx package of one expert, pinned at build
├── perstack-sandbox/proxy    Python 3 + the `proxy/` package
└── perstack-sandbox/workspace  bindfs + Python 3: the workspace layer (see `_workspace`)
```

A tag is the hash of everything that goes into its image (recipe files, parent image id,
package specs, the trusted CA bundle), so an image that exists is reused without a build.
Registry hosts come from the host's npm and pip settings at build time, never from this code.

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

import hashlib
import json
import os
import platform
import secrets
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

import docker.errors

from perstack_sandbox.docker_edge import (
    LABEL_BASE,
    LABEL_KIND,
    LABEL_PACKAGES,
    LABEL_RECIPE,
    client,
    docker_errors,
)
from perstack_sandbox.errors import EngineError, ImageBuildError
from perstack_sandbox.images import _build, _locked, _recipe
from perstack_sandbox.images._build import no_progress

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.resources.abc import Traversable

    from perstack_sandbox.lock import ExpertLock, JsonObject
    from perstack_sandbox.plan import PackageSpec, SandboxPlan

RECIPES: Final = "recipes"  # package data: the repository's images/ folder (a link there)
_PACKAGE: Final = __name__.rpartition(".")[0]  # the package that holds RECIPES
PROXY_PACKAGE: Final = "perstack_sandbox_proxy"  # copied into the proxy image as `proxy/`
DEBIAN_IMAGE: Final = "debian:trixie-slim"
BASE_REPO: Final = "perstack-sandbox/base"
PROXY_REPO: Final = "perstack-sandbox/proxy"
WORKSPACE_REPO: Final = "perstack-sandbox/workspace"
WORKSPACE_FILES: Final = ("workspace.Dockerfile", "perstack-workspace.py", "fuse-handover.py")
EXPERT_REPO: Final = "perstack-sandbox/expert"
NODE_MAJOR: Final = "24"  # the first LTS line with NODE_USE_ENV_PROXY (24.5+)
NPM_MAJOR: Final = "11"
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_CA_ENV: Final = "PERSTACK_SANDBOX_HOST_CA"
BOOTSTRAP_TIMEOUT_S: Final = 1800  # debootstrap over a slow mirror
PACKAGES_MARKER: Final = "PERSTACK_PACKAGES="
LABEL_LOCKED: Final = "perstack-sandbox.locked"  # "1" when built from perstack-sandbox.lock
Progress = "Callable[[str], None]"


def is_host_ca_enabled(*, host_ca: bool | None = None) -> bool:
    """Tell whether the host CA bundle is trusted: `host_ca`, else `$PERSTACK_SANDBOX_HOST_CA`."""
    if host_ca is not None:
        return host_ca
    return os.environ.get(HOST_CA_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def recipe(name: str) -> bytes:
    """Return one file of the image recipes (`images/`, shipped inside this package)."""
    return (resources.files(_PACKAGE) / RECIPES / name).read_bytes()


def copy_recipe(name: str, target: Path) -> None:
    """Write recipe file `name` to `target`: scripts 0755, the rest 0644 (however installed)."""
    target.write_bytes(recipe(name))
    target.chmod(0o755 if name.endswith(".sh") else 0o644)


def _proxy_sources() -> list[tuple[str, bytes]]:
    """Return (relative path, bytes) of every module of the proxy package, sorted."""
    found: list[tuple[str, bytes]] = []

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name != "__pycache__":
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".py"):
                found.append((f"{prefix}{entry.name}", entry.read_bytes()))

    walk(resources.files(PROXY_PACKAGE), "")
    return sorted(found)


def _digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()[:16]


def _host_ca_bytes(*, host_ca: bool | None) -> bytes:
    if not is_host_ca_enabled(host_ca=host_ca) or not HOST_CA_BUNDLE.is_file():
        return b""
    return HOST_CA_BUNDLE.read_bytes()


def _node_package() -> str:
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
    return f"node-linux-{arch.get(platform.machine().lower(), 'x64')}@{NODE_MAJOR}"


# Copied into the base build's context (and hashed into its tag), besides the Dockerfile.
BASE_FILES: Final = ("perstack-launch.sh", "seccomp.json", "seccomp-exec.py")


def base_image_name(*, host_ca: bool | None = None) -> str:
    """Return the tag of the sandbox base image for the current recipe and CA choice."""
    digest = _digest(
        recipe("sandbox.Dockerfile"),
        *(recipe(file) for file in BASE_FILES),
        _node_package(),
        f"npm@{NPM_MAJOR}",
        _host_ca_bytes(host_ca=host_ca),
    )
    return f"{BASE_REPO}:{digest}"


def proxy_image_name() -> str:
    """Return the tag of the proxy image for the current proxy sources and recipe."""
    parts: list[bytes | str] = [
        recipe("proxy.Dockerfile"),
        recipe("proxy-entry.sh"),
        _host_ca_bytes(host_ca=None),
    ]
    for relative, source in _proxy_sources():
        parts += [relative, source]
    return f"{PROXY_REPO}:{_digest(*parts)}"


def image_id(name: str) -> str | None:
    """Return the id of a local image, or None when it is absent.

    Raises:
        EngineError: the engine could not be reached.

    """
    with docker_errors(f"inspecting image {name}"):
        try:
            return str(client().images.get(name).id)
        except docker.errors.ImageNotFound:
            return None


def ensure_debian(progress: Callable[[str], None] = no_progress) -> None:
    """Make `debian:trixie-slim` exist: present, pulled, or bootstrapped from the apt mirror.

    Raises:
        EngineError: the bootstrap script failed.

    """
    if image_id(DEBIAN_IMAGE) is not None:
        return
    progress(f"{DEBIAN_IMAGE} is missing: bootstrapping it (images/bootstrap-debian.sh)")
    script = resources.files(_PACKAGE) / RECIPES / "bootstrap-debian.sh"
    try:
        with resources.as_file(script) as path:
            done = subprocess.run(  # noqa: S603 - our own script
                ["/bin/bash", str(path), DEBIAN_IMAGE],
                check=False,
                timeout=BOOTSTRAP_TIMEOUT_S,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # its messages go to `progress`, not to our stderr
                text=True,
                errors="replace",
            )
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"bootstrapping {DEBIAN_IMAGE} timed out") from exc
    for line in done.stderr.splitlines():
        progress(line)
    if done.returncode != 0 or image_id(DEBIAN_IMAGE) is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise EngineError(f"bootstrapping {DEBIAN_IMAGE} failed:\n{tail}")


def ensure_base_image(
    *, host_ca: bool | None = None, progress: Callable[[str], None] = no_progress
) -> str:
    """Return the sandbox base image's tag, building it first when it is missing.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine, npm or pip failed.

    """
    name = base_image_name(host_ca=host_ca)
    if image_id(name) is not None:
        return name
    ensure_debian(progress)
    progress(f"building {name}")
    with tempfile.TemporaryDirectory(prefix="perstack-base-") as tmp:
        context = Path(tmp)
        for file in ("sandbox.Dockerfile", *BASE_FILES):
            copy_recipe(file, context / file)
        (context / "host-ca.crt").write_bytes(_host_ca_bytes(host_ca=host_ca))
        node, npm = _build.npm_pack([_node_package(), f"npm@{NPM_MAJOR}"], context)
        node.rename(context / "node.tgz")
        npm.rename(context / "npm.tgz")
        _build.pip_download_wheel("uv", context).rename(context / "uv.whl")
        _build.build_image(
            context,
            dockerfile="sandbox.Dockerfile",
            tag=name,
            labels={LABEL_KIND: "base", LABEL_RECIPE: name.rsplit(":", 1)[1]},
            progress=progress,
        )
    return name


def ensure_proxy_image(*, progress: Callable[[str], None] = no_progress) -> str:
    """Return the proxy image's tag, building it first when it is missing.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine could not be reached.

    """
    name = proxy_image_name()
    if image_id(name) is not None:
        return name
    ensure_debian(progress)
    progress(f"building {name}")
    with tempfile.TemporaryDirectory(prefix="perstack-proxy-") as tmp:
        context = Path(tmp)
        for file in ("proxy.Dockerfile", "proxy-entry.sh"):
            copy_recipe(file, context / file)
        (context / "host-ca.crt").write_bytes(_host_ca_bytes(host_ca=None))
        for relative, source in _proxy_sources():
            target = context / "proxy" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source)
        _build.build_image(
            context,
            dockerfile="proxy.Dockerfile",
            tag=name,
            labels={LABEL_KIND: "proxy", LABEL_RECIPE: name.rsplit(":", 1)[1]},
            progress=progress,
        )
    return name


def workspace_image_name() -> str:
    """Return the tag of the workspace-layer image for the current recipe."""
    return f"{WORKSPACE_REPO}:{_digest(*(recipe(file) for file in WORKSPACE_FILES))}"


def ensure_workspace_image(*, progress: Callable[[str], None] = no_progress) -> str:
    """Return the workspace-layer image's tag, building it first when it is missing.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine could not be reached.

    """
    name = workspace_image_name()
    if image_id(name) is not None:
        return name
    ensure_debian(progress)
    progress(f"building {name}")
    with tempfile.TemporaryDirectory(prefix="perstack-workspace-") as tmp:
        context = Path(tmp)
        for file in WORKSPACE_FILES:
            copy_recipe(file, context / file)
        _build.build_image(
            context,
            dockerfile="workspace.Dockerfile",
            tag=name,
            labels={LABEL_KIND: "workspace", LABEL_RECIPE: name.rsplit(":", 1)[1]},
            progress=progress,
        )
    return name


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
    return f"{EXPERT_REPO}:{_digest(*parts)}"


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

    with tempfile.TemporaryDirectory(prefix="perstack-expert-") as tmp:
        context = Path(tmp)
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
    with docker_errors(f"inspecting image {name}"):
        labels = client().images.get(name).labels
    loaded = json.loads(labels.get(LABEL_PACKAGES, "[]"))
    return loaded if isinstance(loaded, list) else []


def superseded_images() -> list[str]:
    """Return our images that no current recipe uses (pure cache: at most a rebuild to redo).

    That is older base, proxy and workspace builds, and expert images built on an older base.

    Raises:
        EngineError: the engine could not be reached.

    """
    current_base, current_proxy = base_image_name(), proxy_image_name()
    current_workspace = workspace_image_name()
    with docker_errors("listing images"):
        found = client().api.images(filters={"label": LABEL_KIND})
    stale: list[str] = []
    for image in found:
        labels = image.get("Labels") or {}
        kind = labels.get(LABEL_KIND)
        tags = image.get("RepoTags") or []
        is_current = (
            (kind == "base" and current_base in tags)
            or (kind == "proxy" and current_proxy in tags)
            or (kind == "workspace" and current_workspace in tags)
            or (kind == "expert" and labels.get(LABEL_BASE, current_base) == current_base)
        )
        if not is_current:
            stale.extend(tag for tag in tags if tag != "<none>:<none>")
    return stale
