"""The Docker objects of one sandbox: creating them hardened and labelled; removing them.

`_start` orders their creation. Under runc there is one sandbox container; under gVisor one
per stdio skill, each with the same mounts (docs/architecture.md, decision 25).

Before each create, the object is named in the run's journal (fsynced) and this process's
reaper is running (`_reaper`), so whatever point a run dies at, its objects are found and
removed. The internal network takes a small subnet of the configured range (`_subnets`); the
shared egress network is made once per engine (`_egress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import docker.errors

from perstack_sandbox import state
from perstack_sandbox.docker_edge import (
    LABEL_EXPERT,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_RUN,
    client,
    docker_errors,
    owner_labels,
)
from perstack_sandbox.engine import _reaper, _subnets, _sweep, _workspace
from perstack_sandbox.engine._gvisor import RUNTIMES, host_pids_limit
from perstack_sandbox.errors import EngineError
from perstack_sandbox.images import sandbox_profile
from perstack_sandbox.isolation import DEFAULT_ISOLATION
from perstack_sandbox.plan import EXPERT_DIR, WORKSPACE_DIR

if TYPE_CHECKING:
    from ipaddress import IPv4Network

    import anyio

    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import Limits
    from perstack_sandbox.state import RunState

PROXY_PORT: Final = 3128
SKILL_UID_FIRST: Final = 10001
SKILL_UID_COUNT: Final = 32  # users baked into the base image (images/sandbox.Dockerfile)
SKILL_UIDS: Final = range(SKILL_UID_FIRST, SKILL_UID_FIRST + SKILL_UID_COUNT)
SUBNET_ATTEMPTS: Final = 16  # each refused pick is one that a concurrent start just took
SANDBOX_USER: Final = "10000:10000"
# An explicit upstream resolver makes Docker's embedded DNS forward from inside the container's
# namespace, which on an internal network has no route (the CVE-2024-29018 mitigation); on
# loopback nothing answers, so no name resolves.
SANDBOX_DNS: Final = ("127.0.0.1",)
CPU_SHARES_PER_SKILL: Final = 1024  # the engine's default weight of one container (decision 63)
SCRATCH_TMPFS: Final = "rw,noexec,nosuid,nodev,size=256m"
HOME_TMPFS: Final = "rw,noexec,nosuid,nodev,size=256m,mode=1777"
HARDENING: Final[dict[str, Any]] = {
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "read_only": True,
    "ipc_mode": "private",
}


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything needed to create one sandbox's containers."""

    run_id: str
    expert: str
    image: str
    limits: Limits
    expert_dir: str
    workspace: str | None
    policy: str
    masks: tuple[str, ...] = ()  # paths under /expert covered by `cover`
    cover: str = ""  # an empty file on the host, readable by the skills
    # Whether /expert is mounted at all: only when a skill works there (decision 73).
    expert_mounted: bool = False
    folder_masks: tuple[str, ...] = ()  # folders under /expert (`.git`) covered empty
    isolation: Isolation = DEFAULT_ISOLATION  # of the sandbox containers; the proxy is on runc
    # How many sandbox containers: one under runc; one per stdio skill under gVisor, where a
    # process can read every other process's /proc/<pid>/environ in Debian's runsc. Each of
    # them gets the same mounts: /expert, its env-file covers and the workspace layer's view.
    containers: int = 1
    skills: int = 1  # stdio skills per sandbox container: all under runc, one under gVisor
    # The run's state folder: its journal names each object before it is created.
    run: RunState | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """Ids and addresses of a started sandbox."""

    container_ids: tuple[str, ...]  # the sandbox containers, in skill order
    proxy_id: str
    proxy_ip: str
    proxy_host_ip: str  # "" while the proxy of an early start is still starting
    network_id: str
    proxy_up: anyio.Event  # set once the proxy answers

    @property
    def container_id(self) -> str:
        """The first (under runc, the only) sandbox container."""
        return self.container_ids[0]


def labels_of(spec: SandboxSpec, role: str) -> dict[str, str]:
    """Return the labels of `spec`'s object in `role`: its owner, run, Expert and role."""
    return {**owner_labels(), LABEL_RUN: spec.run_id, LABEL_EXPERT: spec.expert, LABEL_ROLE: role}


def name_of(spec: SandboxSpec, role: str) -> str:
    """Return the engine name of `spec`'s object in `role`."""
    return f"perstack-{spec.run_id}-{role}"


def intend(spec: SandboxSpec, kind: str, name: str, labels: dict[str, str]) -> None:
    """Before a create: make sure the reaper watches, and journal the object (fsynced).

    Raises:
        EngineError: the journal could not be written or the reaper not started.

    """
    journal = spec.run.journal_path if spec.run is not None else None
    try:
        _reaper.guard(journal)
        if spec.run is not None:
            spec.run.record_intent(kind, name, labels)
    except OSError as exc:
        raise EngineError(f"journalling {kind} {name} before creating it: {exc}") from exc


def create_internal_network(spec: SandboxSpec, *, role: str = "network") -> str:
    """Create the internal network of `spec`'s run (a sandbox's, or a fenced build's).

    Its subnet is a small one from the configured range (see `_subnets`); when another process
    took the one picked at the same moment, the engine refuses the overlap and another is tried.

    Raises:
        UsageError: the configured subnet range is malformed.
        EngineError: the engine refused or could not be reached, or the range is full.

    """
    return internal_network(spec, role=role)[0]


def internal_network(spec: SandboxSpec, *, role: str = "network") -> tuple[str, IPv4Network]:
    """Create the internal network of `spec`'s run as `create_internal_network`; and its subnet.

    Raises:
        UsageError: the configured subnet range is malformed.
        EngineError: the engine refused or could not be reached, or the range is full.

    """
    pool = _subnets.configured_pool()
    name, labels = name_of(spec, "net"), labels_of(spec, role)
    intend(spec, "network", name, labels)
    api = client().api
    with docker_errors(f"creating the internal network of run {spec.run_id}"):
        taken = _subnets.parse_subnets(_engine_subnets(api)) + _subnets.host_routes()
        for _attempt in range(SUBNET_ATTEMPTS):
            subnet = _subnets.pick_subnet(pool, taken)
            if subnet is None:
                break
            try:
                return _create_internal(api, name, labels, subnet), subnet
            except docker.errors.APIError as exc:
                if "overlap" not in str(exc.explanation or exc).lower():
                    raise
                taken.append(subnet)  # another sandbox's since our look: pick again
    raise EngineError(
        f"no free /{pool.prefix} subnet left in {pool.network} for run {spec.run_id}; set "
        f"{_subnets.POOL_ENV} to a larger private range, or remove stopped sandboxes (`gc`)"
    )


def _engine_subnets(api: docker.APIClient) -> list[str]:
    subnets = []
    for network in api.networks():
        config = (network.get("IPAM") or {}).get("Config") or []
        subnets += [str(entry["Subnet"]) for entry in config if entry.get("Subnet")]
    return subnets


def _create_internal(
    api: docker.APIClient, name: str, labels: dict[str, str], subnet: IPv4Network
) -> str:
    # The gateway is named, as the engine's own pools do: it is reserved, and with
    # `inhibit_ipv4` below nothing on the host holds it.
    pool = docker.types.IPAMPool(subnet=str(subnet), gateway=str(next(subnet.hosts())))
    created = api.create_network(
        name,
        driver="bridge",
        internal=True,
        check_duplicate=True,
        # An internal network still gives the host an address on its bridge, the container's
        # default gateway: anything on the host listening on all addresses would be
        # reachable. Without that address there is no host end at all.
        options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        ipam=docker.types.IPAMConfig(pool_configs=[pool]),
        labels=labels,
    )
    return str(created["Id"])


def _mounts(spec: SandboxSpec, workspace_view: str | None) -> list[docker.types.Mount]:
    mounts: list[docker.types.Mount] = []
    if spec.expert_mounted:
        mounts.append(docker.types.Mount(EXPERT_DIR, spec.expert_dir, type="bind", read_only=True))
        # The engine mounts deeper targets after /expert, so each env file is covered by an
        # empty regular file: it reads as empty (a skill that loads `.env` gets nothing, not an
        # error), and writes fail with EROFS. A `.git` folder gets an empty read-only tmpfs.
        mounts += [
            docker.types.Mount(target, spec.cover, type="bind", read_only=True)
            for target in spec.masks
        ]
        mounts += [
            docker.types.Mount(target, None, type="tmpfs", read_only=True)
            for target in spec.folder_masks
        ]
    if workspace_view:
        # The workspace layer's view of the folder, never the folder itself (see `_workspace`).
        mounts.append(docker.types.Mount(WORKSPACE_DIR, workspace_view, type="bind"))
    return mounts


def start_workspace_layer(spec: SandboxSpec) -> str | None:
    if not spec.workspace:
        return None
    name, labels = name_of(spec, _workspace.ROLE), labels_of(spec, _workspace.ROLE)
    for kind in ("volume", "container"):  # `serve` makes both, in that order
        intend(spec, kind, name, labels)
    return _workspace.serve(
        spec.workspace,
        name=name,
        labels=labels,
        skill_uids=SKILL_UIDS,
        # What check_workspace refuses to overlap, again here: the layer writes as the owner.
        private=(state.state_dir(), Path(spec.expert_dir)),
    )


def start_sandbox_container(
    spec: SandboxSpec, network: str, workspace_view: str | None, index: int
) -> str:
    api = client().api
    host_config = api.create_host_config(
        **{**HARDENING, "security_opt": sandbox_security_opt(spec.isolation)},
        runtime=RUNTIMES[spec.isolation],
        mounts=_mounts(spec, workspace_view),
        tmpfs={"/tmp": SCRATCH_TMPFS, "/home": HOME_TMPFS},  # noqa: S108 - a private tmpfs
        mem_limit=spec.limits.memory_bytes,
        memswap_limit=spec.limits.memory_bytes,
        nano_cpus=int(spec.limits.cpus * 1e9),
        **_pids_limits(spec),
        network_mode=network,
        dns=list(SANDBOX_DNS),
        **sandbox_cpu_weight(spec),
    )
    name = name_of(spec, f"sandbox-{index}" if index else "sandbox")
    labels = labels_of(spec, "sandbox")
    intend(spec, "container", name, labels)
    with docker_errors(f"starting the sandbox container of run {spec.run_id}"):
        created = api.create_container(
            spec.image,
            name=name,
            hostname="sandbox",
            user=SANDBOX_USER,
            working_dir=WORKSPACE_DIR,
            labels=labels,
            host_config=host_config,
        )
        api.start(created["Id"])
    return str(created["Id"])


def sandbox_cpu_weight(spec: SandboxSpec) -> dict[str, Any]:
    """Return a sandbox container's CPU weight: the engine's default once per skill in it.

    The scheduler weighs a container as one, however many skills start in it; the weight only
    divides CPU under contention, under the `cpus` limit (docs/architecture.md, decision 63).
    """
    if spec.skills <= 1:
        return {}  # the engine's default: no setting at all
    return {"cpu_shares": CPU_SHARES_PER_SKILL * spec.skills}


def _pids_limits(spec: SandboxSpec) -> dict[str, Any]:
    """Return the process limits of a sandbox container (gVisor: see `host_pids_limit`)."""
    if spec.isolation != "gvisor":
        return {"pids_limit": spec.limits.pids}
    nproc = docker.types.Ulimit(name="nproc", soft=spec.limits.pids, hard=spec.limits.pids)
    return {"pids_limit": host_pids_limit(spec.limits.pids), "ulimits": [nproc]}


def sandbox_security_opt(isolation: Isolation = DEFAULT_ISOLATION) -> list[str]:
    """Return the sandbox's security options: no-new-privileges and our own seccomp profile.

    The engine wants the profile's JSON text itself (a path would be read by the CLI, not the
    engine); under gVisor, in the form runsc reads. The proxy runs our own code and keeps the
    engine's default profile.

    Raises:
        EngineError: the profile shipped in images/ is missing or broken.

    """
    profile = sandbox_profile(gvisor=isolation == "gvisor")
    return [*HARDENING["security_opt"], f"seccomp={profile}"]


def remove_run(run_id: str) -> None:
    """Force-remove every container, then every volume and network, labelled with `run_id`.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    _sweep.remove_labelled({"label": [f"{LABEL_MANAGED}=1", f"{LABEL_RUN}={run_id}"]})
