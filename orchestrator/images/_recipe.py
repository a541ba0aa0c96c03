"""The per-expert build recipe: a Dockerfile whose package installs each run as their own uid.

```
FROM <base>
USER root           RUN  make every install folder, owned by the uid that will fill it   ours
USER 10900+i        RUN  install package i (npm install scripts, sdist builds)       untrusted
USER 10999          COPY + RUN finalize.py: one entry link per package                    ours
USER 10000          the sandbox's idle process, as in the base image
```
Install code is the package author's: it runs fenced (see `_fence`), and as a uid that owns
nothing but its own package's folders. So it cannot alter another package's files (which run
with that skill's secrets), nor the entry links, nor plant anything where a later step looks:
every folder a later step uses is made by root before the first install, HOME and TMPDIR are
a fresh `mktemp -d` per step, and finalize runs with `python3 -I` from a folder only its own
uid can write. Proxy settings are build arguments: an ENV would leak into every skill's
environment, and build arguments never reach the image's configuration.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Final

from perstack_sandbox.errors import ImageBuildError
from perstack_sandbox.plan import ENTRY_DIR, NPM_ROOT, UV_TOOL_DIR

if TYPE_CHECKING:
    from collections.abc import Sequence

    from perstack_sandbox.plan import PackageSpec

# No skill (10001..10032) nor the sandbox's idle process (10000) ever runs as these uids.
PACKAGE_UID_BASE: Final = 10900
BUILD_UID: Final = 10999  # our own steps after the installs (finalize)
SANDBOX_UID: Final = 10000
UV_LINK_DIR: Final = "/opt/perstack/uv/links"  # per package: the executables uv installed
FINALIZE_DIR: Final = f"{ENTRY_DIR}/.finalize"  # slugs never start with a dot
PROXY_ARGS: Final = (
    *("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"),
    *("NO_PROXY", "no_proxy"),
)
_FRESH_HOME: Final = 'HOME="$(mktemp -d)" && export HOME TMPDIR="$HOME"'
_TOOL_SETTINGS: Final = (
    "ARG NPM_REGISTRY=",
    "ARG UV_INDEX_URL=",
    "ARG UV_PYTHON=/usr/bin/python3",
    "ARG UV_PYTHON_DOWNLOADS=never",
    "ARG UV_COMPILE_BYTECODE=1",
    "ARG UV_SYSTEM_CERTS=1",
    "ARG NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
    "ARG SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
)


def package_uid(index: int) -> int:
    """Return the uid that installs the `index`-th package.

    Raises:
        ImageBuildError: more packages than uids between the base and `BUILD_UID`.

    """
    uid = PACKAGE_UID_BASE + index
    if not index >= 0 or uid >= BUILD_UID:
        raise ImageBuildError(f"at most {BUILD_UID - PACKAGE_UID_BASE} packages per expert")
    return uid


def package_dirs(package: PackageSpec) -> tuple[str, ...]:
    """Return the folders a package's install writes (and owns)."""
    if package.manager == "npm":
        return (f"{NPM_ROOT}/{package.slug}",)
    return (f"{UV_TOOL_DIR}/{package.slug}", f"{UV_LINK_DIR}/{package.slug}")


def _owned(uid: int, folders: Sequence[str]) -> str:
    quoted = " ".join(shlex.quote(folder) for folder in folders)
    return f"install -d -o {uid} -g {uid} -m 755 {quoted}"


def build_prelude(base: str, packages: Sequence[PackageSpec] = ()) -> list[str]:
    """Return the lines every fenced build starts with; after them the user is `BUILD_UID`.

    Raises:
        ImageBuildError: too many packages.

    """
    made = [f"mkdir -p {NPM_ROOT} {UV_TOOL_DIR} {UV_LINK_DIR}"]
    made.append(_owned(BUILD_UID, (ENTRY_DIR,)))
    made += [_owned(package_uid(i), package_dirs(p)) for i, p in enumerate(packages)]
    return [
        f"FROM {base}",
        "USER root",
        "RUN " + " && ".join(made),
        f"USER {BUILD_UID}:{BUILD_UID}",
        *(f"ARG {name}=" for name in PROXY_ARGS),
    ]


def install_step(package: PackageSpec) -> str:
    """Return the RUN line that installs one package into its own folders."""
    if package.manager == "npm":
        spec = f"{package.name}@{package.version_spec}" if package.version_spec else package.name
        (prefix,) = package_dirs(package)
        return (
            f"RUN {_FRESH_HOME} && npm install --prefix {shlex.quote(prefix)} {_NPM_FLAGS}"
            f' {shlex.quote(spec)} && rm -rf "$HOME"'
        )
    tools, links = package_dirs(package)
    return (
        f"RUN {_FRESH_HOME} UV_TOOL_DIR={shlex.quote(tools)} UV_TOOL_BIN_DIR={shlex.quote(links)}"
        f' && uv tool install {_UV_INDEX} {shlex.quote(requirement(package))} && rm -rf "$HOME"'
    )


LOCK_FILES: Final = {"npm": ("package.json", "package-lock.json"), "pypi": ("requirements.txt",)}
LOCK_CONTEXT: Final = "lock"  # the build context's folder of locked files, one per slug
_NPM_FLAGS: Final = (
    '${NPM_REGISTRY:+--registry "$NPM_REGISTRY"} --omit=dev --no-audit --no-fund'
    " --no-update-notifier"
)
_UV_INDEX: Final = '${UV_INDEX_URL:+--default-index "$UV_INDEX_URL"}'


def requirement(package: PackageSpec) -> str:
    """Return the PEP 508 requirement of a PyPI package spec (a bare version means `==`)."""
    if not package.version_spec:
        return package.name
    operator = "" if package.version_spec[0] in "=<>!~" else "=="
    return f"{package.name}{operator}{package.version_spec}"


def resolve_step(package: PackageSpec) -> str:
    """Return the RUN line that resolves one package's tree into its lock files.

    npm writes a package-lock (with every `integrity`) without installing; uv compiles a
    hashed requirement set. Both land in the package's folder, where the builder reads them.
    """
    folder = package_dirs(package)[0]
    if package.manager == "npm":
        spec = f"{package.name}@{package.version_spec}" if package.version_spec else package.name
        resolve = (
            f"npm install --prefix {shlex.quote(folder)} --package-lock-only {_NPM_FLAGS}"
            f" {shlex.quote(spec)}"
        )
    else:
        resolve = (
            f"printf '%s\\n' {shlex.quote(requirement(package))} | uv pip compile -"
            f" --generate-hashes --no-header --no-annotate --python /usr/bin/python3 {_UV_INDEX}"
            f" -o {folder}/requirements.txt"
        )
    return f'RUN {_FRESH_HOME} && {resolve} && rm -rf "$HOME"'


def locked_install_step(package: PackageSpec) -> str:
    """Return the RUN line that installs exactly a package's locked tree, verifying hashes.

    The lock files are already in the package's folder. A failure names the package: a hash
    that does not match is the registry (or the lock) changing what the review approved.
    """
    folder = shlex.quote(package_dirs(package)[0])
    if package.manager == "npm":
        install = f"npm ci --prefix {folder} {_NPM_FLAGS}"
    else:
        _, links = package_dirs(package)
        venv = f"{package_dirs(package)[0]}/venv"
        # SOURCE_DATE_EPOCH makes the compiled bytecode hash-checked, not stamped with the
        # time of extraction: two builds of one lock then give the same bytes.
        install = (
            f"export SOURCE_DATE_EPOCH=0 && uv venv --quiet --python /usr/bin/python3 {venv}"
            f" && uv pip install --python {venv}/bin/python --require-hashes {_UV_INDEX}"
            f" -r {folder}/requirements.txt"
            f" && ln -s {venv}/bin/{shlex.quote(package.name)} {links}/{shlex.quote(package.name)}"
        )
    failed = shlex.quote(
        f"the locked install of {package.manager} package {package.name} failed: a hash in "
        "perstack-sandbox.lock does not match what the registry served, or the lock is incomplete"
    )
    guarded = f"{{ {install} || {{ echo {failed} >&2; exit 1; }}; }}"
    return f'RUN {_FRESH_HOME} && {guarded} && rm -rf "$HOME"'


def resolve_dockerfile(base: str, packages: Sequence[PackageSpec], *, nonce: str) -> str:
    """Return the Dockerfile that resolves (never installs) every package, each as its uid.

    `nonce` (fresh per resolution) is an argument every step sees, so no resolution is ever
    taken from the engine's build cache: a cached step would replay yesterday's registry.

    Raises:
        ImageBuildError: too many packages.

    """
    lines = [*build_prelude(base, packages), f"ARG PERSTACK_RESOLUTION={nonce}", *_TOOL_SETTINGS]
    for index, package in enumerate(packages):
        uid = package_uid(index)
        lines += [f"USER {uid}:{uid}", resolve_step(package)]
    return "\n".join(lines) + "\n"


def expert_dockerfile(
    base: str, packages: Sequence[PackageSpec], *, locked: bool = False, build_id: str = ""
) -> str:
    """Return the per-expert Dockerfile (see the module docstring).

    With `locked`, each package's lock files are copied from the context's `lock/<slug>/`
    and installed exactly (`locked_install_step`) instead of resolved afresh. `build_id`
    (fresh per build) keeps the last step out of the engine's build cache: that step prints
    the versions the builder reads, and a cached step prints nothing. The installs above it
    still come from the cache.

    Raises:
        ImageBuildError: too many packages.

    """
    lines = [*build_prelude(base, packages), *_TOOL_SETTINGS]
    for index, package in enumerate(packages):
        uid = package_uid(index)
        lines.append(f"USER {uid}:{uid}")
        if locked:
            folder = package_dirs(package)[0]
            lines.append(f"COPY --chown={uid}:{uid} {LOCK_CONTEXT}/{package.slug}/ {folder}/")
            lines.append(locked_install_step(package))
        else:
            lines.append(install_step(package))
    lines += [
        f"USER {BUILD_UID}:{BUILD_UID}",
        f"COPY --chown={BUILD_UID}:{BUILD_UID} finalize.py manifest.json {FINALIZE_DIR}/",
        *([f"ARG PERSTACK_BUILD={build_id}"] if build_id else []),
        (
            f"RUN python3 -I {FINALIZE_DIR}/finalize.py {FINALIZE_DIR}/manifest.json"
            f" && rm -rf {FINALIZE_DIR}"
        ),
        f"USER {SANDBOX_UID}",
    ]
    return "\n".join(lines) + "\n"
