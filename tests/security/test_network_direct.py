"""Direct egress: code in a skill ignores the proxy variables and opens its own sockets.

Every probe here would leave the machine if the sandbox's network protection were gone, so the
module's guard (`no_route_out`, in conftest) runs first and aims only at listeners of ours on
this host; all probes of the module then run at once, because an unreachable next hop takes a
few seconds to be reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support import UNREACHABLE, host_addresses

if TYPE_CHECKING:
    from support import Hostile, Listener, UdpEcho

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("no_route_out")]

TCP_TARGETS = {
    "aws-gcp-azure-metadata": ("169.254.169.254", 80),
    "azure-wireserver": ("168.63.129.16", 80),
    "alibaba-metadata": ("100.100.100.200", 80),
    "oracle-metadata": ("192.0.0.192", 80),
    "private-10": ("10.0.0.1", 443),
    "private-172-16": ("172.16.0.1", 443),
    "private-192-168": ("192.168.0.1", 443),
    "cgnat": ("100.64.0.1", 443),
    "public-dns-https": ("8.8.8.8", 443),
    "public-https": ("1.1.1.1", 443),
    "docker-api-on-gateway": ("GATEWAY", 2375),
    "docker-tls-api-on-gateway": ("GATEWAY", 2376),
    "kubelet-on-gateway": ("GATEWAY", 10250),
}
IPV6_TARGETS = {
    "aws-ipv6-metadata": ("fd00:ec2::254", 80),
    "public-ipv6": ("2001:4860:4860::8888", 443),
    "nat64": ("64:ff9b::808:808", 443),
}
MAPPED_TARGET = ("::ffff:169.254.169.254", 80)
UDP_TARGETS = {
    "udp-public": ("8.8.8.8", 443),
    "udp-metadata": ("169.254.169.254", 80),
    "udp-gateway": ("GATEWAY", 0),
}


@pytest.fixture(scope="module")
async def outcomes(hostile: Hostile, udp_echo: UdpEcho) -> dict[str, str]:
    """Run every direct probe of this module once, concurrently, in the hostile skill."""
    calls = {f"tcp {k}": ("tcp_connect", *v) for k, v in (TCP_TARGETS | IPV6_TARGETS).items()}
    calls["tcp ipv4-mapped"] = ("tcp_connect", *MAPPED_TARGET)
    calls |= {
        f"udp {k}": ("udp_exchange", h, p or udp_echo.port) for k, (h, p) in UDP_TARGETS.items()
    }
    calls |= {
        f"udp host {address}": ("udp_exchange", address, udp_echo.port)
        for address in host_addresses()
    }
    calls |= {f"udp6 {k}": ("udp_exchange", *v) for k, v in IPV6_TARGETS.items()}
    code = (
        f"calls = {calls!r}\ngw = default_gateway()\n"
        "emit(in_parallel({k: (globals()[f], gw if h == 'GATEWAY' else h, p)"
        " for k, (f, h, p) in calls.items()}))"
    )
    found: dict[str, str] = await hostile.probe(code)
    return found


@pytest.mark.parametrize("target", sorted(TCP_TARGETS))
async def test_direct_tcp_to_metadata_private_and_public_addresses_is_unreachable(
    outcomes: dict[str, str], target: str
) -> None:
    """A TCP connect that ignores the proxy fails locally (no host end of the network).

    Fails when: the sandbox network gets a host end (checked by hand: without `inhibit_ipv4`
    the guard connects to our host listeners on every host address and fails first, so no
    probe of this module is ever aimed outside).
    """
    assert outcomes[f"tcp {target}"] in UNREACHABLE


@pytest.mark.parametrize("target", sorted(IPV6_TARGETS))
async def test_direct_ipv6_has_no_source_address_at_all(
    outcomes: dict[str, str], target: str
) -> None:
    """The sandbox has no IPv6 address, so IPv6 sockets cannot even pick a source.

    Fails when: the sandbox network is created with `enable_ipv6=True` (not checked by hand:
    that would give the sandbox a real IPv6 path, and there is no local-only IPv6 target).
    """
    assert outcomes[f"tcp {target}"] == "EADDRNOTAVAIL"
    assert outcomes[f"udp6 {target}"] == "EADDRNOTAVAIL"


async def test_an_ipv4_mapped_ipv6_address_takes_the_ipv4_path_and_fails_the_same(
    outcomes: dict[str, str],
) -> None:
    """`::ffff:169.254.169.254` is routed as IPv4 and is just as unreachable.

    Fails when: the sandbox network is not internal (the guard fails first).
    """
    assert outcomes["tcp ipv4-mapped"] in UNREACHABLE


@pytest.mark.parametrize("target", sorted(UDP_TARGETS))
async def test_direct_udp_gets_no_answer_from_anywhere(
    outcomes: dict[str, str], target: str, udp_echo: UdpEcho
) -> None:
    """Datagrams are dropped at the missing next hop: no answer, and our echo hears nothing.

    Fails when: the sandbox network is not internal or its bridge has a host address (our
    host's UDP echo answers: checked by hand with `inhibit_ipv4` dropped).
    """
    assert outcomes[f"udp {target}"] == "timeout"
    assert udp_echo.received == []


async def test_udp_to_every_host_address_never_reaches_our_echo(
    outcomes: dict[str, str], udp_echo: UdpEcho
) -> None:
    """A UDP echo of ours on every host address never hears from the sandbox.

    Fails when: the sandbox network is not internal (the echo answers).
    """
    host_probes = {k: v for k, v in outcomes.items() if k.startswith("udp host ")}
    assert host_probes
    assert set(host_probes.values()) <= {"timeout", *UNREACHABLE}
    assert udp_echo.received == []


async def test_guard_no_listener_on_the_host_is_reachable(
    no_route_out: dict[str, str], host_listeners: list[Listener]
) -> None:
    """Our host listeners (all addresses, each bridge, the sandbox's gateway) see nothing.

    Fails when: the internal network gets a host address (checked by hand: without
    `inhibit_ipv4` the sandbox connected to our listeners on docker0, the host's LAN address,
    every bridge address and its own gateway).
    """
    assert any(target.startswith("gateway ") for target in no_route_out)
    assert set(no_route_out.values()) <= UNREACHABLE
    assert not [peer for listener in host_listeners for peer in listener.accepted]
