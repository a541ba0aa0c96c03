"""The workspace layer: the user's folder, writable by every skill, its new files the owner's.

```
  host folder (owner U:G, mode 0755)
       │ bind                                  workspace container (role "workspace")
       ▼                                       no network, read-only root, /dev/fuse
     /src ──── bindfs as U:G, no capability ───► /view  FUSE, nosuid, nodev
                                                   │ rshared: the mount shows on the host, in
                                                   ▼ the run's volume folder
  sandbox /workspace ◄── bind of that volume folder, made once the mount answers
```

What the user expects: a skill can write an ordinary folder of theirs (0755), and what it
creates there is theirs on the host (uid and gid of the folder), to edit and delete. What must
stay: each skill runs as its own uid (10001..), so one cannot read another's home or
`/proc/<pid>/environ`. Why this mechanism, and not the others:

- **Idmapped mounts** would map each sandbox uid to one host uid, but an idmap is a bijection:
  32 skill uids cannot all become the owner. Docker 20.10 has no idmapped binds anyway.
- **A shared group with setgid folders** fixes the group, never the owner, and a 0755 folder
  stays unwritable to every skill until the user opens it up.
- **Fixing ownership afterwards** (a keeper that chowns) cannot help either: a non-owner cannot
  create anything in a 0755 folder at all. The writes must reach the disk *as the owner*.
- **One container per skill, running as the owner** keeps homes and environments apart by
  namespaces instead of uids, but it changes how every skill is started, makes all skills share
  one uid with the user, and costs a container start per skill.
- **bindfs on the host** would work too, but puts a daemon that parses a hostile skill's file
  operations next to every host path (as root, to create files as another user). A container
  sees only the workspace, and the orchestrator needs no host package and no root.

So a FUSE layer (Debian's bindfs) in a small container of its own. Its entry point
(`images/perstack-workspace.py`) mounts `/view` while it holds CAP_SYS_ADMIN, then runs bindfs
as the folder's owner with no capability, no_new_privs and a seccomp filter: every file
operation of every skill is done by the owner's uid, so new files are the owner's and a skill
can do in the folder exactly what the owner could, not more. The filter refuses a chmod that
sets setuid or setgid, and nothing runs setuid from the mount (`nosuid`). bindfs never resolves
symlinks itself, and even if it did, the only host path it can reach is the workspace: the
folder is bound without the host mounts inside it, and the state directory or the Expert's
folder, should they lie inside it, are covered empty (skills act there as the owner, whom the
state's file modes do not stop).

The mount reaches the sandbox through the host: `/view` is a bind of a fresh volume's folder
with rshared propagation (Docker keeps its data root a shared mount), and the sandbox binds that
folder once the mount answers. Container and volume carry the run's labels, so `ps`, `down`
and `gc` find them. Teardown stops the container first (it unmounts on SIGTERM); after a
SIGKILL the host keeps a dead mount on the volume folder, which a short-lived "reaper"
container of the same image unmounts so the volume can go. (docs/architecture.md, decision 22.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import docker.errors
import docker.types

from perstack_sandbox import images
from perstack_sandbox.docker_edge import (
    LABEL_ROLE,
    STDERR_STREAM,
    client,
    docker_errors,
    split_frames,
)
from perstack_sandbox.errors import EngineError, UsageError
from perstack_sandbox.text import printable

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence

ROLE: Final = "workspace"
REAPER_ROLE: Final = "workspace-reaper"
SOURCE_DIR: Final = "/src"
VIEW_DIR: Final = "/view"
REAPER_DIR: Final = "/volume"
FUSE_DEVICE: Final = "/dev/fuse"
# Mount (then only unmount), and drop to the owner: the entry point's needs, nothing else.
CAPABILITIES: Final = ("SYS_ADMIN", "SETUID", "SETGID", "SETPCAP")
MEMORY_BYTES: Final = 128 * 1024**2  # bindfs and the Python entry point: 6 MiB seen idle
PIDS: Final = 32
NANO_CPUS: Final = 1_000_000_000  # bindfs serves one request at a time anyway
READY_TIMEOUT_S: Final = 20.0  # Python start and one FUSE round trip on a loaded 2-core host
STOP_TIMEOUT_S: Final = 5  # SIGTERM: the entry point unmounts at once; then SIGKILL
REAP_TIMEOUT_S: Final = 30  # a container that runs `umount -l`
READY_LINE: Final = b"ready\n"
HOST_HINT: Final = "or run without --workspace"


@dataclass(frozen=True, slots=True)
class Owner:
    """The uid and gid a workspace folder belongs to: what skills' new files get."""

    uid: int
    gid: int


def owner_of(folder: str) -> Owner:
    """Return the owner (uid and gid) of the workspace `folder` on this host.

    Raises:
        UsageError: the folder cannot be read.

    """
    try:
        found = Path(folder).stat()
    except OSError as exc:
        raise UsageError(f"the workspace {folder} cannot be read: {exc.strerror}") from exc
    return Owner(found.st_uid, found.st_gid)


@functools.cache
def _security_options() -> tuple[str, ...]:
    with docker_errors("reading the engine's security options"):
        found = client().api.info().get("SecurityOptions") or []
    return tuple(str(option) for option in found)


def _is_local_engine() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def check_host() -> None:
    """Refuse, before anything starts, an engine on which the workspace layer cannot work.

    Raises:
        EngineError: the engine remaps uids (rootless or userns-remap), or its host has no FUSE.

    """
    options = " ".join(_security_options())
    if "name=rootless" in options or "name=userns" in options:
        raise EngineError(
            "--workspace needs an engine that does not remap uids (this one runs rootless or "
            "with userns-remap), so files can be created as the folder's owner; use a rootful "
            f"engine without userns-remap, {HOST_HINT}"
        )
    if _is_local_engine() and not Path(FUSE_DEVICE).exists():
        raise EngineError(
            f"--workspace needs FUSE and this host has no {FUSE_DEVICE}: load the module "
            f"(`modprobe fuse`), {HOST_HINT}"
        )


def _advice(message: str) -> str:
    if FUSE_DEVICE in message:
        return f"the engine's host has no usable {FUSE_DEVICE}: `modprobe fuse`, {HOST_HINT}"
    if "shared mount" in message:
        return (
            "the engine's data root is not a shared mount (Docker makes it one at start; "
            f"restart the engine), {HOST_HINT}"
        )
    return f"`perstack-sandbox doctor` checks the engine, {HOST_HINT}"


def covered(folder: str, private: Sequence[Path]) -> list[str]:
    """Return where, under /src, each existing folder of `private` inside `folder` lies.

    Both sides are resolved (links followed), so a path spelled through a link still counts.
    """
    root = Path(folder).resolve()
    found = []
    for path in private:
        inner = path.resolve()
        if root in inner.parents and inner.is_dir():
            found.append(posixpath.join(SOURCE_DIR, inner.relative_to(root).as_posix()))
    return sorted(found)


def container_config(
    folder: str, mountpoint: str, owner: Owner, skill_uids: range, covers: Sequence[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Return the host config and command of the workspace container (pure: no engine call).

    `skill_uids` see every file as their own (bindfs `--mirror`): that only shapes what the
    kernel checks; the disk is always written as `owner`. Each of `covers` (paths under /src)
    is hidden behind an empty read-only tmpfs.
    """
    # Not recursive: a host mount inside the folder (of the state directory, of the home) is
    # not the folder, and bindfs would serve it with the owner's rights. Docker-py has no
    # argument for it.
    source = docker.types.Mount(SOURCE_DIR, folder, type="bind")
    source["BindOptions"] = {"NonRecursive": True}
    host_config: dict[str, Any] = {
        "cap_drop": ["ALL"],
        "cap_add": list(CAPABILITIES),
        "security_opt": ["no-new-privileges:true", *_apparmor()],
        "read_only": True,
        "ipc_mode": "private",
        "network_mode": "none",
        "devices": [f"{FUSE_DEVICE}:{FUSE_DEVICE}:rwm"],
        "mounts": [
            source,
            docker.types.Mount(VIEW_DIR, mountpoint, type="bind", propagation="rshared"),
            *(docker.types.Mount(cover, None, type="tmpfs", read_only=True) for cover in covers),
        ],
        "mem_limit": MEMORY_BYTES,
        "memswap_limit": MEMORY_BYTES,
        "pids_limit": PIDS,
        "nano_cpus": NANO_CPUS,
    }
    command = [str(owner.uid), str(owner.gid), str(skill_uids[0]), str(skill_uids[-1])]
    return host_config, command


def _apparmor() -> list[str]:
    # Docker's AppArmor profile denies every mount, and mounting /view is this container's
    # whole job. Its one exposed process (bindfs) has no capability and no mount call.
    return ["apparmor=unconfined"] if "name=apparmor" in " ".join(_security_options()) else []


def serve(
    folder: str,
    *,
    name: str,
    labels: dict[str, str],
    skill_uids: range,
    private: Sequence[Path] = (),
) -> str:
    """Start the workspace layer for `folder`; return the host folder the sandbox must bind.

    Blocks until the layer answers. The volume and container are named `name` and carry
    `labels` (with the role set to "workspace"), so the run's teardown and `gc` remove them.
    A folder of `private` that lies inside `folder` is served empty: skills would otherwise
    reach it with the owner's rights, which no file mode stops.

    Raises:
        UsageError: the folder cannot be read.
        EngineError: the engine refused, the image build failed, or the layer did not start.

    """
    owner = owner_of(folder)
    image = images.ensure_workspace_image()
    api = client().api
    labels = {**labels, LABEL_ROLE: ROLE}
    with docker_errors(f"creating the workspace volume {name}"):
        mountpoint = str(api.create_volume(name=name, driver="local", labels=labels)["Mountpoint"])
    covers = covered(folder, private)
    host_config, command = container_config(folder, mountpoint, owner, skill_uids, covers)
    try:
        with docker_errors(f"starting the workspace layer for {folder}"):
            created = api.create_container(
                image,
                command=command,
                name=name,
                user="0:0",
                labels=labels,
                host_config=api.create_host_config(**host_config),
            )
            # Attached before the start, so no output can hide in the HTTP response's buffer.
            response = api.attach_socket(
                created["Id"], params={"stdout": 1, "stderr": 1, "stream": 1}
            )
        sock: socket.socket = getattr(response, "_sock", response)
        with contextlib.closing(sock), docker_errors(f"starting the workspace layer {name}"):
            api.start(created["Id"])
            _wait_ready(sock)
    except EngineError as exc:
        exc.add_note(_advice(str(exc)))
        raise
    return mountpoint


def _wait_ready(sock: socket.socket) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    received, out, err = b"", b"", b""
    while READY_LINE not in out:
        remaining = deadline - time.monotonic()
        chunk = _receive(sock, remaining) if remaining > 0 else None
        if not chunk:
            why = "stopped" if chunk == b"" else f"was not ready in {READY_TIMEOUT_S:.0f} s"
            detail = printable(err.decode(errors="replace").strip()) or "no message"
            raise EngineError(f"the workspace layer {why}: {detail}")
        frames, received = split_frames(received + chunk)
        for stream, payload in frames:
            if stream == STDERR_STREAM:
                err += payload
            else:
                out += payload


def _receive(sock: socket.socket, timeout: float) -> bytes | None:
    """Return the next bytes (b"" at the end of the stream), or None after `timeout`."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None


def stop(container_id: str) -> None:
    """Stop a workspace container so that it unmounts (SIGTERM, then SIGKILL after a while).

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    with (
        docker_errors("stopping the workspace layer"),
        contextlib.suppress(docker.errors.NotFound),
    ):
        client().api.stop(container_id, timeout=STOP_TIMEOUT_S)


def remove_volumes(
    filters: dict[str, Any], *, keep: Callable[[dict[str, str]], bool] | None = None
) -> list[str]:
    """Remove the volumes matching `filters` (unless `keep(labels)`); name them.

    A volume whose folder still holds the mount of a killed workspace container is unmounted
    by a reaper container first.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    api = client().api
    with docker_errors("listing sandbox volumes"):
        found = api.volumes(filters=filters).get("Volumes") or []
    removed = []
    for volume in found:
        labels = volume.get("Labels") or {}
        if keep is not None and keep(labels):
            continue
        try:
            _remove_volume(volume["Name"])
        except EngineError as exc:
            if "not connected" not in str(exc):  # ENOTCONN: a dead FUSE mount on its folder
                raise
            _reap(volume, labels)
            _remove_volume(volume["Name"])
        removed.append(f"volume {volume['Name']}")
    return removed


def _remove_volume(name: str) -> None:
    with docker_errors(f"removing volume {name}"), contextlib.suppress(docker.errors.NotFound):
        client().api.remove_volume(name, force=True)


def _reap(volume: dict[str, Any], labels: dict[str, str]) -> None:
    """Unmount the dead FUSE mount left on `volume`'s folder by a killed workspace container."""
    api = client().api
    image = images.workspace_image_name()
    if images.image_id(image) is None:
        raise EngineError(
            f"volume {volume['Name']} holds a stale mount and {image} is missing to unmount it: "
            "run `perstack-sandbox doctor --fix`, then `perstack-sandbox gc`"
        )
    folder = str(volume["Mountpoint"])
    inner = posixpath.join(REAPER_DIR, posixpath.basename(folder))
    host_config = api.create_host_config(
        cap_drop=["ALL"],
        cap_add=["SYS_ADMIN"],
        security_opt=["no-new-privileges:true", *_apparmor()],
        read_only=True,
        network_mode="none",
        mounts=[
            docker.types.Mount(
                REAPER_DIR, posixpath.dirname(folder), type="bind", propagation="rshared"
            )
        ],
    )
    with docker_errors(f"unmounting the stale workspace mount of {volume['Name']}"):
        created = api.create_container(
            image,
            entrypoint=["umount", "-l", inner],
            user="0:0",
            labels={**labels, LABEL_ROLE: REAPER_ROLE},
            host_config=host_config,
        )
        try:
            api.start(created["Id"])
            api.wait(created["Id"], timeout=REAP_TIMEOUT_S)
        finally:
            api.remove_container(created["Id"], force=True)
