"""`doctor`: is this host ready to run sandboxes, and what to do about each problem."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from perstack_sandbox import images
from perstack_sandbox.docker_edge import ENGINE_HINT, client, docker_errors
from perstack_sandbox.engine import _gvisor, _sweep, _workspace
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report."""

    name: str
    is_ok: bool
    detail: str
    advice: str = ""
    is_optional: bool = False  # a failed optional check is a warning: the doctor still passes


def _engine_checks() -> list[Check]:
    try:
        api = client().api
        with docker_errors("reading engine information"):
            info = api.info()
    except EngineError as exc:
        return [Check("engine", is_ok=False, detail=str(exc), advice=ENGINE_HINT)]
    driver = str(info.get("Driver", "?"))
    cgroup = str(info.get("CgroupVersion", "1"))
    return [
        Check("engine", is_ok=True, detail=f"Docker {info.get('ServerVersion', '?')}"),
        Check(
            "storage driver",
            is_ok=driver in {"overlay2", "overlayfs"},
            detail=driver,
            advice="overlay2 is expected; builds and starts are slower with other drivers",
        ),
        Check("cgroup", is_ok=True, detail=f"v{cgroup} (memory, CPU and pids limits apply)"),
    ]


def _image_check(what: str, name: str, advice: str) -> Check:
    present = images.image_id(name) is not None
    return Check(
        what, is_ok=present, detail=f"{name} {'present' if present else 'missing'}", advice=advice
    )


def _image_checks() -> list[Check]:
    fix = "run `perstack-sandbox doctor --fix` (or `make images`)"
    checks = [
        _image_check("stock Debian", images.DEBIAN_IMAGE, f"{fix}: bootstraps it with debootstrap"),
        _image_check("base image", images.base_image_name(), fix),
        _image_check("proxy image", images.proxy_image_name(), fix),
        _image_check("workspace image", images.workspace_image_name(), f"{fix} (for --workspace)"),
    ]
    if not checks[1].is_ok and shutil.which("npm") is None:
        checks.append(
            Check(
                "npm",
                is_ok=False,
                detail="not installed",
                advice="install npm: the base build fetches Node.js with it",
            )
        )
    ca = images.HOST_CA_BUNDLE
    if images.is_host_ca_enabled():
        found = ca.is_file()
        checks.append(
            Check(
                "host CA",
                is_ok=found,
                detail=f"{ca} {'trusted in images' if found else 'missing'}",
                advice=f"set {images.HOST_CA_ENV}=0 to build without the host's CA bundle",
            )
        )
    else:
        checks.append(Check("host CA", is_ok=True, detail=f"not trusted ({images.HOST_CA_ENV}=0)"))
    return checks


def _workspace_check() -> Check:
    try:
        _workspace.check_host()
    except EngineError as exc:
        return Check("workspace layer", is_ok=False, detail=str(exc))
    return Check("workspace layer", is_ok=True, detail="FUSE available, uids not remapped")


def _leftover_check() -> Check:
    orphans = [run.run_id for run in _sweep.list_runs() if not run.is_owner_alive]
    return Check(
        "leftovers",
        is_ok=not orphans,
        detail=f"{len(orphans)} run(s) whose owner is gone" if orphans else "none",
        advice="run `perstack-sandbox gc`",
    )


def gvisor_check(problem: str = "") -> Check:
    """Say whether `--isolation gvisor` can run: runsc installed and registered.

    Optional (a warning) unless `problem` says why a `--fix` of it failed.
    """
    status = _gvisor.runsc_status()
    advice = problem or (
        "only `--isolation gvisor` needs it: run `perstack-sandbox doctor --fix` as root "
        f"(installs Debian's {_gvisor.APT_PACKAGE} and registers it)"
    )
    found = status.version or status.binary or "runsc"
    if status.is_ready:
        detail = f"{found} registered ({' '.join(status.registered_args or ())})"
    elif status.registered_args is not None:
        detail = f"{found} registered without {' '.join(status.missing_args)}"
    elif status.binary:
        detail = f"{found} installed, not registered with the engine"
    else:
        detail = "runsc not installed"
    # Only `--isolation gvisor` needs it, unless `--fix` was asked to set it up and could not.
    return Check("gvisor", status.is_ready, detail, advice, is_optional=not problem)


def diagnose(*, fix: bool, progress: Callable[[str], None]) -> list[Check]:
    """Check the engine, images and gVisor; with `fix`, sweep leftovers, build, set up gVisor.

    A gVisor set-up that fails (not root, no apt-get) is reported as a failed check, not
    raised, so that the other checks are still shown.

    Raises:
        ImageBuildError: `fix` was asked and a build failed.
        EngineError: `fix` was asked and the engine, npm or pip failed.

    """
    checks = _engine_checks()
    if not all(check.is_ok for check in checks[:1]):
        return checks
    problem = ""
    if fix:
        for line in _sweep.collect_garbage():
            progress(f"removed {line} (its owner is gone)")
        images.ensure_debian(progress)
        images.ensure_base_image(progress=progress)
        images.ensure_proxy_image(progress=progress)
        images.ensure_workspace_image(progress=progress)
        try:
            _gvisor.install_and_register(progress)
        except EngineError as exc:
            problem = str(exc)
    checks += [*_image_checks(), _workspace_check(), gvisor_check(problem)]
    return [*checks, _leftover_check()]
