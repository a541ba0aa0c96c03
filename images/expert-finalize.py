"""Run as the last step of a per-expert image build: make one entry point per skill package.

`/opt/perstack/entry/<slug>` links to the executable `npx`/`uvx` would run for that package,
so a skill starts with no package manager in the way and no registry at run time. Nothing is
linked into a folder on the skills' PATH: a package naming an executable `node` or `python3`
would otherwise run as every other skill. The resolved versions are printed on one marker
line, which the builder records as an image label. Run with `python3 -I`: nothing a package
installed is on its import path.
"""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

ENTRY_DIR = Path("/opt/perstack/entry")
NPM_ROOT = Path("/opt/perstack/npm")
UV_LINKS = Path("/opt/perstack/uv/links")
UV_TOOLS = Path("/opt/perstack/uv/tools")
MARKER = "PERSTACK_PACKAGES="
TREES_MARKER = "PERSTACK_TREES="


def npm_entry(name, slug):
    """The bin `npx NAME` runs: the only one, else the one named like the package."""
    package_dir = NPM_ROOT / slug / "node_modules" / name
    manifest = json.loads((package_dir / "package.json").read_text())
    unscoped = name.rsplit("/", 1)[-1]
    bins = manifest.get("bin") or {}
    if isinstance(bins, str):
        bins = {unscoped: bins}
    if len(bins) == 1:
        (bin_name,) = bins
    elif unscoped in bins:
        bin_name = unscoped
    else:
        sys.exit(f"npm package {name} has no single executable (bins: {sorted(bins)})")
    return NPM_ROOT / slug / "node_modules" / ".bin" / bin_name, manifest["version"]


def uv_entry(name, slug):
    """The executable `uvx NAME` runs: the one named like the package, in its own links."""
    links = UV_LINKS / slug
    target = links / name
    if not target.exists():
        available = sorted(p.name for p in links.iterdir())
        sys.exit(f"PyPI package {name} installs no executable named {name} (has: {available})")
    wanted = normalise(name)
    for dist in (UV_TOOLS / slug).glob("*/lib/python3*/site-packages/*.dist-info"):
        dist_name, _, version = dist.name.removesuffix(".dist-info").partition("-")
        if normalise(dist_name) == wanted:
            return target, version
    return target, ""


def tree_digest(folder):
    """One digest of a package's installed tree: every path with its file's or link's digest.

    Modes and times are left out: the content is what a lock pins; a build of the same lock
    must give the same digest.
    """
    entries = []
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            entries.append(f"{relative} -> {os.readlink(path)}")
        elif path.is_file():
            entries.append(f"{relative} {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return "sha256:" + hashlib.sha256("\n".join(entries).encode()).hexdigest()


def package_folder(package):
    """The folder a package's install filled."""
    root = NPM_ROOT if package["manager"] == "npm" else UV_TOOLS
    return root / package["slug"]


def normalise(name):
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def main():
    """Create the entry links and print the resolved versions."""
    packages = json.loads(Path(sys.argv[1]).read_text())
    ENTRY_DIR.mkdir(parents=True, exist_ok=True)
    resolved = []
    for package in packages:
        if package["manager"] == "npm":
            target, version = npm_entry(package["name"], package["slug"])
        else:
            target, version = uv_entry(package["name"], package["slug"])
        os.symlink(target, ENTRY_DIR / package["slug"])
        resolved.append({**package, "version": version, "entry": str(target)})
    print(MARKER + json.dumps(resolved, sort_keys=True, separators=(",", ":")))
    trees = {p["slug"]: tree_digest(package_folder(p)) for p in packages}
    print(TREES_MARKER + json.dumps(trees, sort_keys=True, separators=(",", ":")))


main()
