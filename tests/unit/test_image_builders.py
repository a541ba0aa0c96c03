"""The shared images' one builder: each context and label as its recipe says, without Docker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from perstack_sandbox import images
from perstack_sandbox.images import _build, _cache

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SHARED = [
    (
        images.ensure_base_image,
        "base",
        {"sandbox.Dockerfile", "perstack-launch.sh", "seccomp.json", "seccomp-exec.py"}
        | {"host-ca.crt", "node.tgz", "npm.tgz", "uv.whl"},
    ),
    (
        images.ensure_proxy_image,
        "proxy",
        {"proxy.Dockerfile", "proxy-entry.sh", "host-ca.crt", "proxy/__init__.py"},
    ),
    (
        images.ensure_workspace_image,
        "workspace",
        {"workspace.Dockerfile", "perstack-workspace.py", "fuse-handover.py"},
    ),
]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, object]]:
    """Record each build's context (file -> mode) and arguments; every image is missing."""
    built: dict[str, dict[str, object]] = {}

    def build_image(context: Path, **options: object) -> str:
        files = {
            str(path.relative_to(context)): path.stat().st_mode & 0o777
            for path in context.rglob("*")
            if path.is_file()
        }
        built[str(options["tag"])] = {"files": files, **options}
        return "sha256:built"

    def npm_pack(specs: list[str], destination: Path) -> list[Path]:
        packed = [destination / f"{index}.tgz" for index in range(len(specs))]
        for path in packed:
            path.write_bytes(b"tgz")
        return packed

    def pip_download_wheel(_requirement: str, destination: Path) -> Path:
        (destination / "uv.whl").write_bytes(b"whl")
        return destination / "uv.whl"

    monkeypatch.setattr(_build, "build_image", build_image)
    monkeypatch.setattr(_build, "npm_pack", npm_pack)
    monkeypatch.setattr(_build, "pip_download_wheel", pip_download_wheel)
    only_debian = {_cache.DEBIAN_IMAGE: "sha256:debian"}
    monkeypatch.setattr(_cache, "image_id", only_debian.get)
    return built


@pytest.mark.parametrize(("ensure", "kind", "expected"), SHARED)
def test_a_missing_shared_image_is_built_from_its_recipe_files_and_labelled_with_its_kind(
    builds: dict[str, dict[str, object]],
    ensure: Callable[..., str],
    kind: str,
    expected: set[str],
) -> None:
    """The context holds the recipe files (scripts 0755) and extras; labels say kind and hash."""
    tag = ensure(progress=lambda _line: None)
    built = builds[tag]
    files: dict[str, int] = built["files"]  # type: ignore[assignment]
    assert expected <= set(files)
    assert all(mode == 0o755 for name, mode in files.items() if name.endswith(".sh"))
    assert built["dockerfile"] == f"{'sandbox' if kind == 'base' else kind}.Dockerfile"
    assert built["labels"] == {
        "perstack-sandbox.kind": kind,
        "perstack-sandbox.recipe": tag.rsplit(":", 1)[1],
    }


@pytest.mark.parametrize(("ensure", "kind", "expected"), SHARED)
def test_a_present_shared_image_is_reused_without_a_build(
    builds: dict[str, dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
    ensure: Callable[..., str],
    kind: str,
    expected: set[str],
) -> None:
    """An image whose tag exists is returned as is: nothing is built."""
    del kind, expected
    monkeypatch.setattr(_cache, "image_id", lambda _name: "sha256:present")
    assert ensure(progress=lambda _line: None).startswith("perstack-sandbox/")
    assert builds == {}
