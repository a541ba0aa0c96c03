"""The layout keeps its promises: private means private, and the proxy stands alone.

(The layers themselves are import-linter's `layers` contract in pyproject.toml, run by
`make lint`.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"perstack_sandbox": ROOT / "orchestrator", "perstack_sandbox_proxy": ROOT / "proxy"}


def _modules(package: str) -> dict[str, Path]:
    """Map every module of `package` (by its installed name) to its file in the checkout."""
    folder = PACKAGES[package]
    found = {}
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder)
        if relative.parts[0] == "images" and "recipes" in relative.parts:
            continue  # image recipes, not modules of the package
        parts = [package, *relative.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path) -> list[str]:
    """Return every dotted name `module` imports (`from a import b` gives `a.b`)."""
    names = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _private_owner(name: str) -> str | None:
    """Return the package that owns the first private part of `name`, if it has one."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_private_modules_and_names_are_used_only_inside_their_own_package(package):
    """An `_x` is imported only from within the package that holds it (else it is public)."""
    leaks = []
    for module, path in _modules(package).items():
        for name in _imported(module, path):
            owner = _private_owner(name)
            inside = module == owner or module.startswith(f"{owner}.")
            if owner and name.split(".")[0] in PACKAGES and not inside:
                leaks.append(f"{module} imports {name}")
    assert leaks == []


def test_the_proxy_imports_nothing_from_the_orchestrator():
    """The proxy runs alone in its container: no import of perstack_sandbox at all."""
    imports = [
        (module, name)
        for module, path in _modules("perstack_sandbox_proxy").items()
        for name in _imported(module, path)
        if name.split(".")[0] == "perstack_sandbox"
    ]
    assert imports == []


def test_the_scan_sees_a_private_import_across_packages(tmp_path):
    """The scanner itself: a cross-package `_x` import is reported, a sibling one is not."""
    path = tmp_path / "mod.py"
    path.write_text(
        "from perstack_sandbox.engine import _fence\nfrom perstack_sandbox.engine._x import y\n"
    )
    names = _imported("perstack_sandbox.images._cache", path)
    assert [_private_owner(name) for name in names] == [
        "perstack_sandbox.engine",
        "perstack_sandbox.engine",
    ]
    assert not "perstack_sandbox.engine._sweep".startswith("perstack_sandbox.images.")


def test_the_proxy_imports_itself_only_relatively():
    """The image copies the proxy as `proxy/`: its own installed name does not exist there.

    Seen failing with `from perstack_sandbox_proxy._netrules import ...` in proxy/__init__.py
    (the proxy container exited 1 on start).
    """
    absolute = [
        (module, f"{node.module}")
        for module, path in _modules("perstack_sandbox_proxy").items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and not node.level
        and (node.module or "").split(".")[0] == "perstack_sandbox_proxy"
    ]
    absolute += [
        (module, alias.name)
        for module, path in _modules("perstack_sandbox_proxy").items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.split(".")[0] == "perstack_sandbox_proxy"
    ]
    assert absolute == []
