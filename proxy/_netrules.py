"""Which resolved addresses the proxy may dial.

The list is explicit on purpose. Python's ``is_private``/``is_global`` also flag the
documentation ranges (for example 203.0.113.0/24), and some networks route real services
there, so those flags would deny hosts that are allowed and public for our purposes.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NON_PUBLIC_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        # IPv4: docs/architecture.md, decision 3.
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved and broadcast
        "168.63.129.16/32",  # Azure wire server
        # IPv6.
        "::/128",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        "ff00::/8",
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local-use prefix (RFC 8215)
        "2002::/16",  # 6to4
        "2001::/32",  # Teredo
    )
)

# Verdicts remembered per AddressRules (answers of the hosts a run reaches; bounded).
_VERDICTS_KEPT: Final = 4096
_MAPPED: Final = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED: Final = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE: Final = ipaddress.ip_network("::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address carried by an IPv4-mapped, -translated or -compatible IPv6 one.

    Returns:
        The embedded IPv4 address, or None when ``address`` is IPv4 or carries none.

    """
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address in _MAPPED or address in _TRANSLATED or address in _COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_non_public(address: IPAddress) -> bool:
    """Tell whether ``address`` (or the IPv4 address it embeds) is in the non-public list."""
    if any(address in network for network in NON_PUBLIC_NETWORKS):
        return True
    inner = embedded_ipv4(address)
    return inner is not None and is_non_public(inner)


@dataclass(frozen=True)
class AddressRules:
    """The address half of the policy: test CIDRs and the proxy's own addresses."""

    test_allow: tuple[IPNetwork, ...] = ()
    own: frozenset[IPAddress] = field(default_factory=frozenset)
    _verdicts: dict[str, tuple[IPAddress | None, str | None]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def with_own(self, addresses: Iterable[IPAddress]) -> AddressRules:
        """Return a copy that also refuses ``addresses`` as the proxy's own."""
        return AddressRules(self.test_allow, self.own | frozenset(addresses))

    def verdict(self, answer: str) -> tuple[IPAddress | None, str | None]:
        """Parse a resolver's ``answer`` and decide on it: (address, why it is refused).

        The address is None when the answer is not one ("bad-answer"). Remembered per
        answer text: these rules never change, and ipaddress hashes and compares in Python,
        which cost a few microseconds on every CONNECT (docs/architecture.md, decision 62).
        """
        known = self._verdicts.get(answer)
        if known is not None:
            return known
        address = parse_address(answer)
        verdict = (None, "bad-answer") if address is None else (address, self.refusal(address))
        if len(self._verdicts) >= _VERDICTS_KEPT:
            self._verdicts.clear()
        self._verdicts[answer] = verdict
        return verdict

    def refusal(self, address: IPAddress) -> str | None:
        """Return why ``address`` may not be dialled, or None when it may.

        The proxy's own addresses are refused even inside a test CIDR, so a test setup can
        never turn the proxy into a loop back to itself.
        """
        inner = embedded_ipv4(address)
        if address in self.own or (inner is not None and inner in self.own):
            return "own-address"
        if any(address.version == net.version and address in net for net in self.test_allow):
            return None
        if _is_non_public_cached(address):
            return "non-public-address"
        return None


@functools.lru_cache(maxsize=4096)
def _is_non_public_cached(address: IPAddress) -> bool:
    """`is_non_public`, remembered: a host's few addresses come back on every CONNECT."""
    return is_non_public(address)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """Parse a resolver's answer (dropping any ``%zone``), or None when it is not an address.

    Remembered (it is pure): a host's few answers come back on every CONNECT.
    """
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
