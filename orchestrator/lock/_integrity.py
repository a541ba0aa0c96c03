"""Every package of a locked tree must carry a hash before a build may install it.

npm's `npm ci` and uv's `--require-hashes` verify what they download against the lock, but
npm quietly installs an entry that has no `integrity`, so the lock is checked here first: a
package without a hash fails the build before any step runs, named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox.errors import ImageBuildError

if TYPE_CHECKING:
    from collections.abc import Sequence

HASH_OPTION: Final = "--hash="


def check_npm_tree(package: str, package_lock: Any) -> None:  # noqa: ANN401 - parsed JSON
    """Check that every installed package of a package-lock has an `integrity` hash.

    Raises:
        ImageBuildError: the lock is malformed, or a package (named) has no hash.

    """
    entries = package_lock.get("packages") if isinstance(package_lock, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ImageBuildError(f"the lock of npm package {package} has no installed tree")
    for path, entry in sorted(entries.items()):
        if path == "" or (isinstance(entry, dict) and entry.get("inBundle")):
            continue  # the install folder itself; a dependency inside its parent's checked tarball
        name = path.rpartition("node_modules/")[2] or path
        if not isinstance(entry, dict) or entry.get("link"):
            raise ImageBuildError(f"npm package {name} (in {package}) is not a registry package")
        integrity = entry.get("integrity")
        if not isinstance(integrity, str) or not integrity.startswith("sha"):
            raise ImageBuildError(
                f"npm package {name} (in {package}) has no integrity hash in the lock"
            )


def requirement_entries(lines: Sequence[str]) -> list[str]:
    """Join a requirement set's continuation lines: one string per requirement."""
    joined: list[str] = []
    current = ""
    for raw in lines:
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            if current.strip():
                joined.append(current.strip())
            current = ""
    if current.strip():
        joined.append(current.strip())
    return joined


def check_requirements(package: str, lines: Sequence[str]) -> None:
    """Check that every requirement of a hashed set is pinned (`==`) and has a hash.

    Raises:
        ImageBuildError: a requirement (named) is not pinned exactly or has no hash.

    """
    entries = requirement_entries(lines)
    if not entries:
        raise ImageBuildError(f"the lock of PyPI package {package} has no requirement")
    for entry in entries:
        requirement = entry.split()[0]
        if "==" not in requirement:
            raise ImageBuildError(
                f"PyPI package {requirement} (in {package}) is not pinned to one version"
            )
        hashes = [part for part in entry.split() if part.startswith(HASH_OPTION)]
        if not hashes or any(len(part) <= len(HASH_OPTION + "sha256:") for part in hashes):
            raise ImageBuildError(
                f"PyPI package {requirement} (in {package}) has no hash in the lock"
            )
