"""CPU-seconds spent during one start, machine-wide and per group of processes (Linux only).

A start of a sandbox is CPU-bound on a 2-core machine, so its wall time is bounded below by
the CPU it needs divided by the cores. `snapshot()` before and after a start, `usage()` of the
two: CPU-seconds of
- machine: every core's busy time (`/proc/stat`: all but idle and iowait);
- bench: this process (the benchmark, and the run itself in the library rows);
- spawned: this process's descendants (`perstack-sandbox run` and its reaper, `docker run`);
- engine: dockerd, containerd, the containerd shims and runc, with the children each reaped
  (iptables, runc exec) - shared with whatever else uses the engine meanwhile;
- skills: the cgroups of the row's sandbox containers (every skill runs in one), or of the
  floor's container;
- proxy: the cgroup of the row's proxy container;
- kernel: kernel threads (network namespaces, veths, their cleanup);
- other: machine minus all of the above (other users of the machine, and whatever ended
  unreaped in between).
Times from `/proc/<pid>/stat` are in clock ticks (10 ms); cgroups count nanoseconds.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import docker

TICK_S: Final = 1 / os.sysconf("SC_CLK_TCK")
GROUPS: Final = ("bench", "spawned", "engine", "skills", "proxy", "kernel", "other")
ENGINE_COMMS: Final = ("dockerd", "containerd", "containerd-shim", "runc", "docker-proxy")
KTHREADD_PID: Final = 2
ROLE_LABEL: Final = "perstack-sandbox.role"
OWNER_LABEL: Final = "perstack-sandbox.owner-pid"
FLOOR_LABEL: Final = "perstack-bench.floor"
CGROUP_USAGE: Final = (
    ("/sys/fs/cgroup/cpuacct/docker", "cpuacct.usage", 1e-9),  # cgroup v1, cgroupfs driver
    ("/sys/fs/cgroup/docker", "cpu.stat", 1e-6),  # cgroup v2, cgroupfs driver
    ("/sys/fs/cgroup/system.slice", "cpu.stat", 1e-6),  # cgroup v2, systemd (docker-ID.scope)
)


@dataclass(frozen=True)
class Snapshot:
    """CPU-seconds so far: the machine's, each process's (by group) and each container's."""

    machine: float
    processes: dict[tuple[int, int], tuple[str, float]]  # (pid, start) -> (group, seconds)
    containers: dict[str, float]  # container id -> seconds


def snapshot() -> Snapshot:
    """Read the machine's, the grouped processes' and the containers' CPU-seconds so far."""
    return Snapshot(_machine_busy(), _processes(), _containers())


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU-seconds per group (and "machine") between two snapshots taken by this process.

    The containers are told apart by their labels, read from the engine after `after` was
    taken (so that the call itself is not counted): a container is the row's when its owner is
    this process or one of its descendants, or when it carries the floor's label.
    """
    spent = dict.fromkeys(GROUPS, 0.0)
    for key, (group, seconds) in after.processes.items():
        spent[group] += seconds - before.processes.get(key, (group, 0.0))[1]
    ours = {str(os.getpid())} | {
        str(pid) for (pid, _), (g, _) in after.processes.items() if g == "spawned"
    }
    roles = _roles(ours)
    for container, seconds in after.containers.items():
        role = roles.get(container[:12])
        if role is not None:
            spent[role] += seconds - before.containers.get(container, 0.0)
    known = sum(spent.values())
    machine = after.machine - before.machine
    spent["other"] = machine - known
    spent["machine"] = machine
    return spent


def _machine_busy() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(value) for value in fields[:8]]  # guest time is inside user time already
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) * TICK_S


def _processes() -> dict[tuple[int, int], tuple[str, float]]:
    table: dict[int, tuple[str, int, int, list[int]]] = {}  # pid -> comm, ppid, start, times
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{entry.name}/stat").read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            rest = text[text.rindex(")") + 2 :].split()
            times = [int(value) for value in rest[11:15]]  # utime stime cutime cstime
            table[int(entry.name)] = (comm, int(rest[1]), int(rest[19]), times)
    me = os.getpid()
    grouped: dict[tuple[int, int], tuple[str, float]] = {}
    for pid, (comm, _ppid, start, times) in table.items():
        group = _group(pid, comm, table, me)
        if group is not None:
            grouped[pid, start] = (group, sum(times) * TICK_S)
    return grouped


def _group(
    pid: int, comm: str, table: dict[int, tuple[str, int, int, list[int]]], me: int
) -> str | None:
    if pid == me:
        return "bench"
    if pid == KTHREADD_PID or table[pid][1] == KTHREADD_PID:
        return "kernel"
    if comm.startswith(ENGINE_COMMS) and not _in_container(pid):
        return "engine"
    seen, parent = 0, table[pid][1]
    while parent > 1 and seen < len(table):  # the parent chain, bounded against a pid loop
        if parent == me:
            return "spawned"
        parent, seen = table[parent][1] if parent in table else 0, seen + 1
    return None


def _in_container(pid: int) -> bool:
    """Tell a `runc init` already inside a container's cgroup (counted with the container)."""
    try:
        return "docker" in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


def _containers() -> dict[str, float]:
    for root, name, scale in CGROUP_USAGE:
        if not Path(root).is_dir():
            continue
        found: dict[str, float] = {}
        for entry in os.scandir(root):
            container = entry.name.removeprefix("docker-").removesuffix(".scope")
            with contextlib.suppress(OSError, ValueError):
                text = Path(entry.path, name).read_text()
                value = text.split()[1] if name == "cpu.stat" else text  # usage_usec first
                found[container] = int(value) * scale
        if found:
            return found
    return {}


def _roles(owners: set[str]) -> dict[str, str]:
    """Map the short id of each container of this row to "skills" or "proxy"."""
    roles: dict[str, str] = {}
    for container in docker.from_env().api.containers(all=True):
        labels = container.get("Labels") or {}
        if FLOOR_LABEL in labels:
            roles[container["Id"][:12]] = "skills"
        elif labels.get(OWNER_LABEL) in owners and labels.get(ROLE_LABEL) in ("sandbox", "proxy"):
            roles[container["Id"][:12]] = "skills" if labels[ROLE_LABEL] == "sandbox" else "proxy"
    return roles
