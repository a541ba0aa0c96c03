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
This module holds the recipes and the three shared images (base, proxy, workspace), which one
builder makes from their recipe files; the per-expert image is `_expert`'s.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final

import docker.errors

from perstack_sandbox import state
from perstack_sandbox.docker_edge import (
    LABEL_BASE,
    LABEL_KIND,
    LABEL_RECIPE,
    client,
    docker_errors,
)
from perstack_sandbox.errors import EngineError
from perstack_sandbox.images import _build
from perstack_sandbox.images._build import no_progress

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.resources.abc import Traversable


RECIPES: Final = "recipes"  # package data: the repository's images/ folder (a link there)
_PACKAGE: Final = __name__.rpartition(".")[0]  # the package that holds RECIPES
PROXY_PACKAGE: Final = "perstack_sandbox_proxy"  # copied into the proxy image as `proxy/`
DEBIAN_IMAGE: Final = "debian:trixie-slim"
BASE_REPO: Final = "perstack-sandbox/base"
PROXY_REPO: Final = "perstack-sandbox/proxy"
WORKSPACE_REPO: Final = "perstack-sandbox/workspace"
NODE_MAJOR: Final = "24"  # the first LTS line with NODE_USE_ENV_PROXY (24.5+)
NPM_MAJOR: Final = "11"
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_CA_ENV: Final = "PERSTACK_SANDBOX_HOST_CA"
BOOTSTRAP_TIMEOUT_S: Final = 1800  # debootstrap over a slow mirror
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


def tag_digest(*parts: bytes | str) -> str:
    """Return the hash a tag carries: of every part, each length-prefixed (no ambiguous joins)."""
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


# The recipe files each shared image's context holds (and its tag hashes), the Dockerfile first.
BASE_FILES: Final = ("sandbox.Dockerfile", "perstack-launch.sh", "seccomp.json", "seccomp-exec.py")
PROXY_FILES: Final = ("proxy.Dockerfile", "proxy-entry.sh")
WORKSPACE_FILES: Final = ("workspace.Dockerfile", "perstack-workspace.py", "fuse-handover.py")


def base_image_name(*, host_ca: bool | None = None) -> str:
    """Return the tag of the sandbox base image for the current recipe and CA choice."""
    digest = tag_digest(
        *(recipe(file) for file in BASE_FILES),
        _node_package(),
        f"npm@{NPM_MAJOR}",
        _host_ca_bytes(host_ca=host_ca),
    )
    return f"{BASE_REPO}:{digest}"


def proxy_image_name() -> str:
    """Return the tag of the proxy image for the current proxy sources and recipe."""
    parts: list[bytes | str] = [
        *(recipe(file) for file in PROXY_FILES),
        _host_ca_bytes(host_ca=None),
    ]
    for relative, source in _proxy_sources():
        parts += [relative, source]
    return f"{PROXY_REPO}:{tag_digest(*parts)}"


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


def _ensure_built(
    name: str,
    kind: str,
    files: Sequence[str],
    progress: Callable[[str], None],
    fill: Callable[[Path], None] = lambda _context: None,
) -> str:
    """Return `name`, building it first when it is missing; the one builder of shared images.

    The context holds the recipe `files` (the Dockerfile first), then whatever `fill` adds;
    the image is labelled with its `kind` and its tag's hash.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine, npm or pip failed.

    """
    if image_id(name) is not None:
        return name
    ensure_debian(progress)
    progress(f"building {name}")
    with state.build_context(kind) as context:
        for file in files:
            copy_recipe(file, context / file)
        fill(context)
        _build.build_image(
            context,
            dockerfile=files[0],
            tag=name,
            labels={LABEL_KIND: kind, LABEL_RECIPE: name.rsplit(":", 1)[1]},
            progress=progress,
        )
    return name


def ensure_base_image(
    *, host_ca: bool | None = None, progress: Callable[[str], None] = no_progress
) -> str:
    """Return the sandbox base image's tag, building it first when it is missing.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine, npm or pip failed.

    """

    def fill(context: Path) -> None:
        (context / "host-ca.crt").write_bytes(_host_ca_bytes(host_ca=host_ca))
        node, npm = _build.npm_pack([_node_package(), f"npm@{NPM_MAJOR}"], context)
        node.rename(context / "node.tgz")
        npm.rename(context / "npm.tgz")
        _build.pip_download_wheel("uv", context).rename(context / "uv.whl")

    return _ensure_built(base_image_name(host_ca=host_ca), "base", BASE_FILES, progress, fill)


def ensure_proxy_image(*, progress: Callable[[str], None] = no_progress) -> str:
    """Return the proxy image's tag, building it first when it is missing.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine could not be reached.

    """

    def fill(context: Path) -> None:
        (context / "host-ca.crt").write_bytes(_host_ca_bytes(host_ca=None))
        for relative, source in _proxy_sources():
            target = context / "proxy" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source)

    return _ensure_built(proxy_image_name(), "proxy", PROXY_FILES, progress, fill)


def workspace_image_name() -> str:
    """Return the tag of the workspace-layer image for the current recipe."""
    return f"{WORKSPACE_REPO}:{tag_digest(*(recipe(file) for file in WORKSPACE_FILES))}"


def ensure_workspace_image(*, progress: Callable[[str], None] = no_progress) -> str:
    """Return the workspace-layer image's tag, building it first when it is missing.

    Raises:
        ImageBuildError: the build failed.
        EngineError: the engine could not be reached.

    """
    return _ensure_built(workspace_image_name(), "workspace", WORKSPACE_FILES, progress)


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
