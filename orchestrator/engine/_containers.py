"""The Docker objects of one sandbox: creating them fast, hardened, labelled; removing them.

Set-up does the minimum number of engine calls, and runs the containers' creation in
parallel: internal network, then {proxy: create, connect egress, start} || {[workspace layer:
volume, container, wait until it answers (see `_workspace`)], sandboxes: create, start}, then
one inspect for the proxy's addresses and a healthz poll from the host. Under runc there is one
sandbox container; under gVisor one per stdio skill, each with the same mounts
(docs/architecture.md, decision 25).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
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
from perstack_sandbox.engine import _health, _workspace
from perstack_sandbox.engine._gvisor import RUNTIMES, host_pids_limit
from perstack_sandbox.errors import EngineError
from perstack_sandbox.images import ensure_proxy_image, sandbox_profile
from perstack_sandbox.isolation import DEFAULT_ISOLATION
from perstack_sandbox.plan import EXPERT_DIR, WORKSPACE_DIR

if TYPE_CHECKING:
    from collections.abc import Callable

    from perstack_sandbox.isolation import Isolation
    from perstack_sandbox.plan import Limits
    from perstack_sandbox.state import RunState

PROXY_PORT: Final = 3128
SKILL_UID_FIRST: Final = 10001
SKILL_UID_COUNT: Final = 32  # users baked into the base image (images/sandbox.Dockerfile)
SKILL_UIDS: Final = range(SKILL_UID_FIRST, SKILL_UID_FIRST + SKILL_UID_COUNT)
EGRESS_NETWORK: Final = "perstack-sandbox-egress"
SANDBOX_USER: Final = "10000:10000"
PROXY_USER: Final = "10000:10000"
# An explicit upstream resolver makes Docker's embedded DNS forward from inside the container's
# namespace, which on an internal network has no route (the CVE-2024-29018 mitigation); on
# loopback nothing answers, so no name resolves.
SANDBOX_DNS: Final = ("127.0.0.1",)
PROXY_MEMORY_BYTES: Final = 256 * 1024**2
PROXY_PIDS: Final = 128
PROXY_NANO_CPUS: Final = 1_000_000_000
SCRATCH_TMPFS: Final = "rw,noexec,nosuid,nodev,size=256m"
HOME_TMPFS: Final = "rw,noexec,nosuid,nodev,size=256m,mode=1777"
PROXY_TMPFS: Final = "rw,noexec,nosuid,nodev,size=16m"
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
    isolation: Isolation = DEFAULT_ISOLATION  # of the sandbox containers; the proxy is on runc
    # How many sandbox containers: one under runc; one per stdio skill under gVisor, where a
    # process can read every other process's /proc/<pid>/environ in Debian's runsc. Each of
    # them gets the same mounts: /expert, its env-file covers and the workspace layer's view.
    containers: int = 1


@dataclass(frozen=True, slots=True)
class Started:
    """Ids and addresses of a started sandbox."""

    container_ids: tuple[str, ...]  # the sandbox containers, in skill order
    proxy_id: str
    proxy_ip: str
    proxy_host_ip: str
    network_id: str

    @property
    def container_id(self) -> str:
        """The first (under runc, the only) sandbox container."""
        return self.container_ids[0]


def _labels(spec: SandboxSpec, role: str) -> dict[str, str]:
    return {**owner_labels(), LABEL_RUN: spec.run_id, LABEL_EXPERT: spec.expert, LABEL_ROLE: role}


def _name(spec: SandboxSpec, role: str) -> str:
    return f"perstack-{spec.run_id}-{role}"


_egress_lock = threading.Lock()


def ensure_egress_network() -> str:
    """Return the shared egress network's id, creating it when missing.

    Only proxies join it, and inter-container traffic on it is off, so proxies of different
    sandboxes cannot reach each other through it.

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    api = client().api
    with _egress_lock, docker_errors("creating the egress network"):
        found = api.networks(names=[EGRESS_NETWORK], filters={"label": f"{LABEL_MANAGED}=1"})
        exact = sorted((n for n in found if n["Name"] == EGRESS_NETWORK), key=lambda n: n["Id"])
        if exact:
            return str(exact[0]["Id"])
        try:
            created = api.create_network(
                EGRESS_NETWORK,
                driver="bridge",
                check_duplicate=True,
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels={LABEL_MANAGED: "1", LABEL_ROLE: "egress"},
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # noqa: PLR2004 - conflict: another process made it
                raise
            return str(api.inspect_network(EGRESS_NETWORK)["Id"])
        return str(created["Id"])


def create_internal_network(spec: SandboxSpec, *, role: str = "network") -> str:
    """Create the internal network of `spec`'s run (a sandbox's, or a fenced build's).

    Raises:
        EngineError: the engine refused or could not be reached.

    """
    with docker_errors(f"creating the internal network of run {spec.run_id}"):
        created = client().api.create_network(
            _name(spec, "net"),
            driver="bridge",
            internal=True,
            check_duplicate=True,
            # An internal network still gives the host an address on its bridge, the
            # container's default gateway: anything on the host listening on all addresses
            # would be reachable. Without that address there is no host end at all.
            options={"com.docker.network.bridge.inhibit_ipv4": "true"},
            labels=_labels(spec, role),
        )
    return str(created["Id"])


def _mounts(spec: SandboxSpec, workspace_view: str | None) -> list[docker.types.Mount]:
    mounts = [docker.types.Mount(EXPERT_DIR, spec.expert_dir, type="bind", read_only=True)]
    # The engine mounts deeper targets after /expert, so each env file is covered by an empty
    # regular file: it reads as empty (a skill that loads `.env` gets nothing, not an error),
    # and writes fail with EROFS.
    mounts += [
        docker.types.Mount(target, spec.cover, type="bind", read_only=True) for target in spec.masks
    ]
    if workspace_view:
        # The workspace layer's view of the folder, never the folder itself (see `_workspace`).
        mounts.append(docker.types.Mount(WORKSPACE_DIR, workspace_view, type="bind"))
    return mounts


def _start_workspace(spec: SandboxSpec) -> str | None:
    if not spec.workspace:
        return None
    return _workspace.serve(
        spec.workspace,
        name=_name(spec, _workspace.ROLE),
        labels=_labels(spec, _workspace.ROLE),
        skill_uids=SKILL_UIDS,
        # What check_workspace refuses to overlap, again here: the layer writes as the owner.
        private=(state.state_dir(), Path(spec.expert_dir)),
    )


def _start_sandbox(spec: SandboxSpec, network: str, workspace_view: str | None, index: int) -> str:
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
    )
    with docker_errors(f"starting the sandbox container of run {spec.run_id}"):
        created = api.create_container(
            spec.image,
            name=_name(spec, f"sandbox-{index}" if index else "sandbox"),
            hostname="sandbox",
            user=SANDBOX_USER,
            working_dir=WORKSPACE_DIR,
            labels=_labels(spec, "sandbox"),
            host_config=host_config,
        )
        api.start(created["Id"])
    return str(created["Id"])


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


def start_proxy(spec: SandboxSpec, network: str, image: str) -> str:
    """Create and start `spec`'s proxy on `network` and the egress network; return its id.

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
    )
    with docker_errors(f"starting the proxy of run {spec.run_id}"):
        created = api.create_container(
            image,
            name=_name(spec, "proxy"),
            hostname="proxy",
            user=PROXY_USER,
            environment={"PERSTACK_PROXY_POLICY": spec.policy},
            labels=_labels(spec, "proxy"),
            host_config=host_config,
        )
        _connect_egress(created["Id"])
        try:
            api.start(created["Id"])
        except docker.errors.NotFound:
            # A concurrent `gc` removed the egress network after our connect (an endpoint
            # exists only once a container runs): join a fresh one and start again.
            with contextlib.suppress(docker.errors.APIError):
                api.disconnect_container_from_network(created["Id"], EGRESS_NETWORK, force=True)
            _connect_egress(created["Id"])
            api.start(created["Id"])
    return str(created["Id"])


def _connect_egress(container_id: str) -> None:
    api = client().api
    try:
        api.connect_container_to_network(container_id, ensure_egress_network())
    except docker.errors.NotFound:
        # `gc` removed the unused egress network between our lookup and the connect.
        api.connect_container_to_network(container_id, ensure_egress_network())


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


async def start(spec: SandboxSpec, run: RunState) -> Started:
    """Create and start the network, proxy and sandboxes of `spec`; wait for the proxy.

    Objects are labelled with the run id as they are made; the caller's teardown removes them
    by that label whatever point this reached.

    Raises:
        EngineError: an engine call failed, or the proxy did not become ready.

    """
    if spec.workspace:
        await anyio.to_thread.run_sync(_workspace.check_host)
    proxy_image = await anyio.to_thread.run_sync(ensure_proxy_image)
    network = await anyio.to_thread.run_sync(create_internal_network, spec)
    proxy: list[str] = []
    sandboxes: dict[int, str] = {}

    async def make_proxy() -> None:
        proxy.append(await anyio.to_thread.run_sync(start_proxy, spec, network, proxy_image))

    async def make_sandbox(index: int, view: str | None) -> None:
        sandboxes[index] = await anyio.to_thread.run_sync(
            _start_sandbox, spec, network, view, index
        )

    async def make_sandboxes() -> None:
        # The layer first: every sandbox binds a mount that already answers (any runtime).
        view = await anyio.to_thread.run_sync(_start_workspace, spec)
        async with anyio.create_task_group() as group:
            for index in range(max(1, spec.containers)):
                group.start_soon(make_sandbox, index, view)

    async with anyio.create_task_group() as group:
        group.start_soon(make_proxy)
        group.start_soon(make_sandboxes)
    proxy_ip, proxy_host_ip = await anyio.to_thread.run_sync(proxy_addresses, proxy[0], network)
    await anyio.to_thread.run_sync(_health.follow_logs, proxy[0], run)
    await _health.wait_ready(proxy[0], proxy_host_ip, PROXY_PORT)
    containers = tuple(sandboxes[index] for index in sorted(sandboxes))
    return Started(containers, proxy[0], proxy_ip, proxy_host_ip, network)


def remove_run(run_id: str) -> None:
    """Force-remove every container, then every volume and network, labelled with `run_id`.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    remove_labelled({"label": [f"{LABEL_MANAGED}=1", f"{LABEL_RUN}={run_id}"]})


def remove_labelled(
    filters: dict[str, Any], *, keep: Callable[[dict[str, str]], bool] | None = None
) -> list[str]:
    """Remove containers, volumes, networks matching `filters` (unless `keep(labels)`); name them.

    Containers go in parallel (each removal waits for its filesystem to be unmounted); a
    workspace layer is stopped first, so that it unmounts. Volumes and networks go after them,
    since neither can be removed while in use.

    Raises:
        EngineError: the engine refused a removal or could not be reached.

    """
    api = client().api

    def is_kept(item: dict[str, Any]) -> bool:
        return keep is not None and keep(item.get("Labels") or {})

    def remove_container(container: dict[str, Any]) -> None:
        if (container.get("Labels") or {}).get(LABEL_ROLE) == _workspace.ROLE:
            _workspace.stop(container["Id"])
        with (
            docker_errors("removing a sandbox container"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            try:
                api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.APIError as exc:
                # Another teardown, `down` or `gc` is removing it right now: it goes either way.
                if not is_removal_in_progress(exc):
                    raise

    with docker_errors("listing sandbox objects"):
        containers = [c for c in api.containers(all=True, filters=filters) if not is_kept(c)]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(containers)))) as pool:
        list(pool.map(remove_container, containers))
    removed = [f"container {c['Names'][0].lstrip('/')}" for c in containers]
    removed += _workspace.remove_volumes(filters, keep=keep)
    with docker_errors("removing sandbox networks"):
        for network in api.networks(filters=filters):
            if is_kept(network):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(network["Id"])
            removed.append(f"network {network['Name']}")
    return removed


def is_removal_in_progress(exc: docker.errors.APIError) -> bool:
    """Return whether the engine refused a removal because one is already under way."""
    return exc.status_code == 409 and "already in progress" in str(exc.explanation or "")  # noqa: PLR2004 - HTTP conflict
