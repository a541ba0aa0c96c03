"""Isolation of the sandbox containers: runc (the default) or gVisor's runsc, and setting it up.

gVisor runs the skills on its own user-space kernel, so a kernel bug reachable through a system
call is a bug in gVisor's kernel (itself confined by a strict seccomp filter), not the host's.
Only the skills run under runsc; the proxy and the workspace layer run our own code on runc.
What the sandbox does differently under gVisor, and why (Debian's runsc, release 20221219;
docs/architecture.md, decisions 15 and 25):
- each stdio skill gets a container of its own (its own gVisor kernel): in that release any
  process may read any other's /proc/<pid>/environ, which would hand one skill another's
  secrets and proxy credential;
- the launcher loads our seccomp profile into each skill (`perstack-launch --seccomp`): runsc
  applies the container's profile to the container's first process only, not to execs;
- the pids limit becomes RLIMIT_NPROC (see `host_pids_limit`);
- a skill's exec is ended when its container dies (an OOM kill of gVisor's kernel leaves the
  stream open).

runsc is registered with the engine as the runtime `runsc`, with two arguments:
- `--network=host`: gVisor uses the network namespace Docker made for the container instead of
  its own network stack. On hosts where Docker sets the namespace up after the runtime starts
  (Docker 20.10 here) runsc otherwise refuses with "cannot run with network enabled in root
  network namespace". The sandbox's fence is that namespace (an internal network, the proxy as
  the only way out), as under runc.
- `--oci-seccomp`: the container's first process gets our profile (`seccomp-gvisor.json`, the
  form runsc reads); runsc ignores the profile otherwise.

`doctor --fix` installs Debian's package `runsc` and registers it in the engine's daemon.json
(other keys kept), then sends dockerd SIGHUP, which reloads runtimes without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from perstack_sandbox.docker_edge import client, docker_errors
from perstack_sandbox.errors import EngineError, IsolationError
from perstack_sandbox.isolation import check_isolation

if TYPE_CHECKING:
    from collections.abc import Callable

    from perstack_sandbox.isolation import Isolation

RUNSC: Final = "runsc"
RUNTIMES: Final[dict[str, str]] = {"runc": "runc", "gvisor": RUNSC}
RUNSC_ARGS: Final = ("--network=host", "--oci-seccomp")
# Under runc the container's pids limit counts the skills' processes. Under gVisor's ptrace
# platform every process in the sandbox is backed by several host tasks (a stub process and the
# threads that trace it: about 6.5 each, measured with a fork bomb), so the host limit cannot
# count them. There the skills' limit is RLIMIT_NPROC, which gVisor's kernel enforces per uid
# with EAGAIN, as the pids limit does under runc (each skill has its own uid and, under gVisor,
# its own container); the host limit stays as a backstop that gVisor's kernel never reaches.
HOST_TASKS_PER_PROCESS: Final = 8
SENTRY_HOST_TASKS: Final = 256  # gVisor's own kernel and file proxy, before any skill process
APT_PACKAGE: Final = "runsc"
DAEMON_JSON: Final = Path("/etc/docker/daemon.json")
DOCKERD_PIDFILE: Final = Path("/var/run/docker.pid")
APT_TIMEOUT_S: Final = 600.0  # apt-get update and install over a slow mirror
RELOAD_TIMEOUT_S: Final = 30.0  # dockerd rereads daemon.json on SIGHUP in well under a second
RELOAD_POLL_S: Final = 0.2
INSTALL_HINT: Final = (
    "install and register gVisor: as root on Debian or Ubuntu, `perstack-sandbox doctor --fix` "
    f"(apt-get install {APT_PACKAGE}, then registers it with the engine); elsewhere install "
    f"runsc and add it to the engine's daemon.json as the runtime {RUNSC!r} with runtimeArgs "
    f"{list(RUNSC_ARGS)}, then reload dockerd (SIGHUP)"
)


@dataclass(frozen=True, slots=True)
class RunscStatus:
    """What the host and the engine say about runsc."""

    binary: str | None  # runsc on this host's PATH, when installed here
    version: str  # first line of `runsc --version`, or ""
    registered_args: tuple[str, ...] | None  # the engine's runtimeArgs for runsc; None: absent

    @property
    def missing_args(self) -> tuple[str, ...]:
        """Return the arguments the registration lacks (all of them when unregistered)."""
        present = self.registered_args or ()
        return tuple(arg for arg in RUNSC_ARGS if arg not in present)

    @property
    def is_ready(self) -> bool:
        """Tell whether `--isolation gvisor` can run: registered, with both arguments."""
        return self.registered_args is not None and not self.missing_args


def host_pids_limit(pids: int) -> int:
    """Return the host pids limit of a gVisor container whose skills may run `pids` processes."""
    return pids * HOST_TASKS_PER_PROCESS + SENTRY_HOST_TASKS


def require_isolation(isolation: str) -> Isolation:
    """Return `isolation` once it is known and available on this engine.

    Raises:
        UsageError: it is neither runc nor gvisor.
        IsolationError: gVisor is asked for and runsc is missing or registered without the
            arguments the sandbox needs (the message says how to install it).
        EngineError: the engine could not be reached.

    """
    known = check_isolation(isolation)
    runtime_for(known)
    return known


def runtime_for(isolation: Isolation) -> str:
    """Return the engine runtime that gives `isolation`; never a weaker one.

    Raises:
        IsolationError: gVisor is asked for and runsc is missing or registered wrongly.
        EngineError: the engine could not be reached.

    """
    if isolation == "gvisor":
        status = runsc_status()
        if status.registered_args is None:
            raise IsolationError(f"gVisor is not registered with the engine; {INSTALL_HINT}")
        if status.missing_args:
            raise IsolationError(
                f"the engine's runtime {RUNSC!r} lacks {' '.join(status.missing_args)}; "
                f"{INSTALL_HINT}"
            )
    return RUNTIMES[isolation]


def runsc_status() -> RunscStatus:
    """Ask the host (PATH) and the engine (`docker info`) about runsc.

    Raises:
        EngineError: the engine could not be reached.

    """
    with docker_errors("reading the engine's runtimes"):
        runtimes: dict[str, Any] = client().api.info().get("Runtimes") or {}
    entry = runtimes.get(RUNSC)
    registered = None if entry is None else tuple(entry.get("runtimeArgs") or ())
    binary = shutil.which(RUNSC)
    return RunscStatus(binary, _version(binary) if binary else "", registered)


def _version(binary: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - runsc found on PATH, fixed arguments
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""


def install_and_register(progress: Callable[[str], None]) -> None:
    """Install runsc with apt-get when missing, register it with the local engine, reload it.

    Raises:
        EngineError: not root, no apt-get, apt-get failed, the engine is not local, its
            daemon.json is unreadable, or dockerd did not load the runtime in time.

    """
    status = runsc_status()
    if status.is_ready:
        return
    binary = status.binary or _apt_install(progress)
    _register(binary, status.registered_args or (), progress)


def _apt_install(progress: Callable[[str], None]) -> str:
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        why = "this is not root" if apt else "apt-get is missing"
        raise EngineError(f"cannot install gVisor ({why}); {INSTALL_HINT}")
    progress(f"installing gVisor: apt-get install {APT_PACKAGE}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", APT_PACKAGE]
    done = _run(install, env)
    if done.returncode != 0:  # the package lists may be old or missing: refresh once
        _run([apt, "update", "-q"], env)
        done = _run(install, env)
    binary = shutil.which(RUNSC)
    if done.returncode != 0 or binary is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise EngineError(f"apt-get install {APT_PACKAGE} failed:\n{tail}")
    return binary


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - apt-get from PATH, fixed arguments
            argv, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{' '.join(argv)} failed: {exc}") from exc


def _register(binary: str, existing: tuple[str, ...], progress: Callable[[str], None]) -> None:
    pid = _local_dockerd()
    config = _daemon_config_path(pid)
    args = [*existing, *(arg for arg in RUNSC_ARGS if arg not in existing)]
    progress(f"registering runsc ({' '.join(args)}) in {config} and reloading dockerd")
    merge_runtime(config, {"path": binary, "runtimeArgs": args})
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while not runsc_status().is_ready:
        if time.monotonic() > deadline:
            raise EngineError(
                f"dockerd did not load the runtime {RUNSC!r} from {config} within "
                f"{RELOAD_TIMEOUT_S:.0f} s; its log says why (a conflicting flag, a JSON error)"
            )
        time.sleep(RELOAD_POLL_S)


def _local_dockerd() -> int:
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        raise EngineError(f"the engine at {host} is not on this host; {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise EngineError(f"registering a runtime needs root; {INSTALL_HINT}")
    try:
        pid = int(DOCKERD_PIDFILE.read_text(encoding="ascii").strip())
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="ascii").strip()
    except (OSError, ValueError) as exc:
        raise EngineError(f"no local dockerd found ({exc}); {INSTALL_HINT}") from exc
    if comm != "dockerd":
        raise EngineError(f"{DOCKERD_PIDFILE} names pid {pid} ({comm}), not dockerd")
    return pid


def _daemon_config_path(pid: int) -> Path:
    """Return the daemon.json dockerd `pid` reads."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return DAEMON_JSON
    return config_file_of(argv)


def config_file_of(argv: list[str]) -> Path:
    """Return the daemon.json dockerd's `--config-file` names, else the default one."""
    for index, arg in enumerate(argv):
        if arg.startswith("--config-file="):
            return Path(arg.split("=", 1)[1])
        if arg == "--config-file" and index + 1 < len(argv):
            return Path(argv[index + 1])
    return DAEMON_JSON


def merge_runtime(config: Path, runtime: dict[str, Any]) -> None:
    """Set `runtimes.runsc` in the JSON file `config`, keeping every other key; write atomically.

    Raises:
        EngineError: the file exists but is not a JSON object, or cannot be written.

    """
    try:
        text = config.read_text(encoding="utf-8") if config.exists() else "{}"
        settings = json.loads(text or "{}")
    except (OSError, ValueError) as exc:
        raise EngineError(f"{config} is not readable JSON ({exc}); fix it first") from exc
    if not isinstance(settings, dict) or not isinstance(settings.get("runtimes", {}), dict):
        raise EngineError(f"{config} is not a JSON object with a `runtimes` object")
    settings.setdefault("runtimes", {})[RUNSC] = runtime
    mode = config.stat().st_mode & 0o777 if config.exists() else 0o644
    staged = config.with_name(f".{config.name}.{os.getpid()}.tmp")
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        staged.chmod(mode)
        staged.replace(config)  # dockerd never reads a half-written file
    except OSError as exc:
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)
        raise EngineError(f"writing {config} failed: {exc}") from exc
