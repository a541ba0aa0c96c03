"""The Docker objects of one sandbox: creating them hardened and labelled; removing them.

`_start` orders their creation. Under runc there is one sandbox container; under gVisor one
per stdio skill, each with the same mounts (docs/architecture.md, decision 25).

Before each create, the object is named in the run's journal (fsynced) and this process's
reaper is running (`_reaper`), so whatever point a run dies at, its objects are found and
removed. The internal network takes a small subnet of the configured range (`_subnets`); the
shared egress network is made once per engine (`_egress`).
"""

from __future__ import annotations

import contextlib
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
from perstack_sandbox.engine import _egress, _reaper, _subnets, _sweep, _workspace
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
PROXY_USER: Final = "10000:10000"
# An explicit upstream resolver makes Docker's embedded DNS forward from inside the container's
# namespace, which on an internal network has no route (the CVE-2024-29018 mitigation); on
# loopback nothing answers, so no name resolves.
SANDBOX_DNS: Final = ("127.0.0.1",)
PROXY_MEMORY_BYTES: Final = 256 * 1024**2
PROXY_PIDS: Final = 128
PROXY_NANO_CPUS: Final = 1_000_000_000
CPU_SHARES_PER_SKILL: Final = 1024  # the engine's default weight of one container (decision 63)
SCRATCH_TMPFS: Final = "rw,noexec,nosuid,nodev,size=256m"
HOME_TMPFS: Final = "rw,noexec,nosuid,nodev,size=256m,mode=1777"
PROXY_TMPFS: Final = "rw,noexec,nosuid,nodev,size=16m"
# The engine keeps its own copy of the proxy's output (one audit line per request a skill
# makes): capped like the run's copy (decision 76), json-file so `docker logs` still reads it.
PROXY_LOG_CONFIG: Final = docker.types.LogConfig(
    type="json-file", config={"max-size": "16m", "max-file": "2"}
)
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


def _labels(spec: SandboxSpec, role: str) -> dict[str, str]:
    return {**owner_labels(), LABEL_RUN: spec.run_id, LABEL_EXPERT: spec.expert, LABEL_ROLE: role}


def _name(spec: SandboxSpec, role: str) -> str:
    return f"perstack-{spec.run_id}-{role}"


def _intend(spec: SandboxSpec, kind: str, name: str, labels: dict[str, str]) -> None:
    """Before a create: make sure the reaper watches, and journal the object (fsynced)."""
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
    name, labels = _name(spec, "net"), _labels(spec, role)
    _intend(spec, "network", name, labels)
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
    name, labels = _name(spec, _workspace.ROLE), _labels(spec, _workspace.ROLE)
    for kind in ("volume", "container"):  # `serve` makes both, in that order
        _intend(spec, kind, name, labels)
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
    name = _name(spec, f"sandbox-{index}" if index else "sandbox")
    labels = _labels(spec, "sandbox")
    _intend(spec, "container", name, labels)
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


def proxy_address(subnet: IPv4Network) -> str:
    """Return the address a sandbox's proxy takes on its internal network: the subnet's last.

    Chosen before anything starts, so the skills' proxy URL is known while the proxy is still
    starting (decision 50); the engine hands the sandbox containers the lowest free addresses.
    """
    return str(subnet.broadcast_address - 1)


def start_proxy(spec: SandboxSpec, network: str, image: str, address: str | None = None) -> str:
    """Create and start `spec`'s proxy on `network` and the egress network; return its id.

    `address`: the proxy's address on `network` (else the engine picks one).

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    created = create_proxy(spec, network, image, address)
    run_proxy(spec, created, image)
    return created


def create_proxy(spec: SandboxSpec, network: str, image: str, address: str | None = None) -> str:
    """Create (not start) `spec`'s proxy on `network`, at `address` when given; return its id.

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    api = client().api
    host_config = api.create_host_config(
        **HARDENING,
        tmpfs={"/tmp": PROXY_TMPFS},  # noqa: S108 - a private tmpfs
        mem_limit=PROXY_MEMORY_BYTES,
        memswap_limit=PROXY_MEMORY_BYTES,
        nano_cpus=PROXY_NANO_CPUS,
        pids_limit=PROXY_PIDS,
        network_mode=network,
        log_config=PROXY_LOG_CONFIG,
    )
    name, labels = _name(spec, "proxy"), _labels(spec, "proxy")
    networking = None
    if address:
        # docker-py takes {network: endpoint}; types-docker types it as one EndpointConfig.
        endpoint = api.create_endpoint_config(ipv4_address=address)
        networking = docker.types.NetworkingConfig({network: endpoint})  # type: ignore[arg-type]
    _intend(spec, "container", name, labels)
    with docker_errors(f"creating the proxy of run {spec.run_id}"):
        created = api.create_container(
            image,
            name=name,
            hostname="proxy",
            user=PROXY_USER,
            environment={"PERSTACK_PROXY_POLICY": spec.policy},
            labels=labels,
            host_config=host_config,
            networking_config=networking,
        )
    return str(created["Id"])


def run_proxy(spec: SandboxSpec, proxy_id: str, image: str) -> None:
    """Connect the created proxy `proxy_id` to the egress network and start it.

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    api = client().api
    with docker_errors(f"starting the proxy of run {spec.run_id}"):
        egress = _connect_egress(proxy_id, image)
        try:
            api.start(proxy_id)
        except docker.errors.NotFound:
            # A concurrent `gc` removed the egress network after our connect (an endpoint
            # exists only once a container runs): join a fresh one and start again.
            with contextlib.suppress(docker.errors.APIError):
                api.disconnect_container_from_network(proxy_id, egress, force=True)
            _connect_egress(proxy_id, image)
            api.start(proxy_id)


def _connect_egress(container_id: str, image: str) -> str:
    api = client().api
    network = _egress.ensure_egress_network(image)
    try:
        api.connect_container_to_network(container_id, network)
    except docker.errors.NotFound:
        # `gc` removed the unused egress network between our lookup and the connect.
        network = _egress.ensure_egress_network(image)
        api.connect_container_to_network(container_id, network)
    return network


def proxy_addresses(proxy_id: str, network_id: str) -> tuple[str, str]:
    """Return the proxy's address on `network_id` and its address on the egress network.

    Raises:
        EngineError: the proxy lacks one of them, or the engine could not be reached.

    """
    with docker_errors("inspecting the proxy"):
        networks = client().api.inspect_container(proxy_id)["NetworkSettings"]["Networks"]
    internal = next((n for n in networks.values() if n.get("NetworkID") == network_id), None)
    egress = next((n for n in networks.values() if n.get("NetworkID") != network_id), None)
    if not internal or not egress or not internal.get("IPAddress"):
        raise EngineError(f"the proxy {proxy_id[:12]} has no address on its networks")
    return str(internal["IPAddress"]), str(egress["IPAddress"])


def remove_run(run_id: str) -> None:
    """Force-remove every container, then every volume and network, labelled with `run_id`.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    _sweep.remove_labelled({"label": [f"{LABEL_MANAGED}=1", f"{LABEL_RUN}={run_id}"]})
