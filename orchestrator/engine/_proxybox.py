"""The proxy container of one sandbox, apart from the sandbox container's code.

It is created hardened on the run's internal network, then joined to the shared egress
network and started; `_start` orders it beside the sandbox container.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

import docker.errors

from perstack_sandbox.docker_edge import client, docker_errors
from perstack_sandbox.engine import _egress
from perstack_sandbox.engine._containers import HARDENING, intend, labels_of, name_of
from perstack_sandbox.errors import EngineError

if TYPE_CHECKING:
    from ipaddress import IPv4Network

    from perstack_sandbox.engine._containers import SandboxSpec

PROXY_USER: Final = "10000:10000"
PROXY_MEMORY_BYTES: Final = 256 * 1024**2
PROXY_PIDS: Final = 128
PROXY_NANO_CPUS: Final = 1_000_000_000
PROXY_TMPFS: Final = "rw,noexec,nosuid,nodev,size=16m"
# The engine keeps its own copy of the proxy's output (one audit line per request a skill
# makes): capped like the run's copy (decision 76), json-file so `docker logs` still reads it.
PROXY_LOG_CONFIG: Final = docker.types.LogConfig(
    type="json-file", config={"max-size": "16m", "max-file": "2"}
)


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
    name, labels = name_of(spec, "proxy"), labels_of(spec, "proxy")
    networking = None
    if address:
        # docker-py takes {network: endpoint}; types-docker types it as one EndpointConfig.
        endpoint = api.create_endpoint_config(ipv4_address=address)
        networking = docker.types.NetworkingConfig({network: endpoint})  # type: ignore[arg-type]
    intend(spec, "container", name, labels)
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
