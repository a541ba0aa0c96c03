"""The third stage: the images a sandbox runs on, each cached under a content-hash tag.

The recipes (Dockerfiles and scripts of the repository's `images/` folder) ship inside this
package as `recipes/` and load with importlib.resources, so an installed copy builds exactly
what a checkout builds. The per-expert build itself is fenced by the engine and passed in
(`ensure_expert_image(plan, build=...)`): images never start containers.

```
_cache.py       recipes, the shared images' tags (hashes of every input) and builder, stale images
_expert.py      the per-expert image: its tag, its fenced build, the versions it recorded
_build.py       a build with streamed progress; host-side inputs (npm pack, pip download)
_recipe.py      the per-expert Dockerfile: one non-root uid per package install
_locked.py      locked builds: resolving a lock in the fence, installing exactly the locked tree
_registries.py  the registry hosts a build may reach, derived from npm's and pip's settings
_seccomp.py     the sandbox's seccomp profile, generated from Docker's default as data
recipes/        the repository's images/ folder (a symlink in a checkout, files in a wheel)
```
"""

from __future__ import annotations

from perstack_sandbox.images._build import build_image, no_progress, stderr_progress
from perstack_sandbox.images._cache import (
    BASE_REPO,
    DEBIAN_IMAGE,
    HOST_CA_BUNDLE,
    HOST_CA_ENV,
    PROXY_REPO,
    WORKSPACE_REPO,
    base_image_name,
    copy_recipe,
    ensure_base_image,
    ensure_debian,
    ensure_proxy_image,
    ensure_workspace_image,
    image_id,
    is_host_ca_enabled,
    proxy_image_name,
    recipe,
    superseded_images,
    workspace_image_name,
)
from perstack_sandbox.images._expert import (
    EXPERT_REPO,
    ExpertBuild,
    ensure_expert_image,
    expert_dockerfile,
    expert_image_name,
    resolved_packages,
)
from perstack_sandbox.images._locked import resolve_packages, tree_digests
from perstack_sandbox.images._recipe import PROXY_ARGS
from perstack_sandbox.images._registries import (
    build_hosts,
    latest_version,
    npm_registry,
    python_index,
)
from perstack_sandbox.images._seccomp import sandbox_profile

__all__ = [
    "BASE_REPO",
    "DEBIAN_IMAGE",
    "EXPERT_REPO",
    "HOST_CA_BUNDLE",
    "HOST_CA_ENV",
    "PROXY_ARGS",
    "PROXY_REPO",
    "WORKSPACE_REPO",
    "ExpertBuild",
    "base_image_name",
    "build_hosts",
    "build_image",
    "copy_recipe",
    "ensure_base_image",
    "ensure_debian",
    "ensure_expert_image",
    "ensure_proxy_image",
    "ensure_workspace_image",
    "expert_dockerfile",
    "expert_image_name",
    "image_id",
    "is_host_ca_enabled",
    "latest_version",
    "no_progress",
    "npm_registry",
    "proxy_image_name",
    "python_index",
    "recipe",
    "resolve_packages",
    "resolved_packages",
    "sandbox_profile",
    "stderr_progress",
    "superseded_images",
    "tree_digests",
    "workspace_image_name",
]
