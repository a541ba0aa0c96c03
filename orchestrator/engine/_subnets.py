"""Small subnets for sandbox networks, from one configurable private range.

Docker's default address pools give every network a /16 or a /20: about 31 networks per engine,
so about 29 sandboxes. A sandbox's internal network holds two containers (its proxy and its
sandbox), a build fence's two at a time, so each takes a /28 (16 addresses, 13 usable) of
`PERSTACK_SANDBOX_SUBNET_POOL` (default 10.213.0.0/16: 4096 such networks), or a prefix set
with `PERSTACK_SANDBOX_SUBNET_PREFIX` (at most /29).

A subnet is picked at random among those that overlap neither an existing Docker network nor a
route of this host (a VPN's, a LAN's), then asked of the engine, whose address allocator
refuses an overlap atomically; two processes that picked the same one at the same moment see
one of them refused and pick again.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from perstack_sandbox.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

POOL_ENV: Final = "PERSTACK_SANDBOX_SUBNET_POOL"
PREFIX_ENV: Final = "PERSTACK_SANDBOX_SUBNET_PREFIX"
DEFAULT_POOL: Final = "10.213.0.0/16"
DEFAULT_PREFIX: Final = 28
# Network, gateway and broadcast addresses, the proxy and the sandbox: 5 of a /29's 8.
SMALLEST_PREFIX: Final = 29
ROUTES_FILE: Final = Path("/proc/net/route")


@dataclass(frozen=True, slots=True)
class SubnetPool:
    """The private range sandbox networks come from, and the size of each."""

    network: ipaddress.IPv4Network
    prefix: int

    @property
    def size(self) -> int:
        """How many subnets of `prefix` the range holds."""
        return 1 << (self.prefix - self.network.prefixlen)

    def subnet(self, index: int) -> ipaddress.IPv4Network:
        """Return the `index`-th subnet of the range (0 <= index < size)."""
        step = 1 << (32 - self.prefix)
        base = int(self.network.network_address) + index * step
        return ipaddress.IPv4Network((base, self.prefix))


def configured_pool(environ: Mapping[str, str] | None = None) -> SubnetPool:
    """Return the range and prefix from `$PERSTACK_SANDBOX_SUBNET_POOL`/`_PREFIX` (or defaults).

    Raises:
        UsageError: the range is not a private IPv4 network, or the prefix does not fit in it.

    """
    env = os.environ if environ is None else environ
    text = env.get(POOL_ENV, "").strip() or DEFAULT_POOL
    prefix_text = env.get(PREFIX_ENV, "").strip() or str(DEFAULT_PREFIX)
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise UsageError(
            f"{POOL_ENV}={text!r} is not an IPv4 network such as 10.213.0.0/16"
        ) from exc
    if not network.is_private:
        raise UsageError(f"{POOL_ENV}={text} is not a private range (RFC 1918, for one)")
    if not prefix_text.isdigit() or not network.prefixlen <= int(prefix_text) <= SMALLEST_PREFIX:
        raise UsageError(
            f"{PREFIX_ENV}={prefix_text!r}: want a prefix from /{network.prefixlen} (the whole "
            f"range) to /{SMALLEST_PREFIX} (a proxy and a sandbox)"
        )
    return SubnetPool(network, int(prefix_text))


def parse_routes(text: str) -> list[ipaddress.IPv4Network]:
    """Return the destinations of a Linux routing table (`/proc/net/route`), default excluded."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:  # noqa: PLR2004 - Iface Destination Gateway Flags ... Mask
            continue
        try:
            destination, mask = (struct.pack("<I", int(fields[i], 16)) for i in (1, 7))
        except (ValueError, struct.error):
            continue
        if mask == b"\0\0\0\0":  # the default route covers everything: not an overlap
            continue
        network = ipaddress.IPv4Network(
            (ipaddress.IPv4Address(destination), str(ipaddress.IPv4Address(mask))), strict=False
        )
        routes.append(network)
    return routes


def host_routes() -> list[ipaddress.IPv4Network]:
    """Return this host's routed IPv4 destinations (none where there is no procfs)."""
    try:
        return parse_routes(ROUTES_FILE.read_text(encoding="ascii"))
    except OSError:
        return []


def parse_subnets(values: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """Return the IPv4 networks among `values` (IPv6 and malformed entries are skipped)."""
    found = []
    for value in values:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            continue
        if isinstance(network, ipaddress.IPv4Network):
            found.append(network)
    return found


def pick_subnet(
    pool: SubnetPool, taken: Iterable[ipaddress.IPv4Network], *, start: int | None = None
) -> ipaddress.IPv4Network | None:
    """Return a subnet of `pool` that overlaps nothing in `taken`, or None when none is left.

    The search starts at a random place (`start`, for tests), so concurrent callers rarely
    pick the same one.
    """
    relevant = [net for net in taken if net.overlaps(pool.network)]
    first = secrets.randbelow(pool.size) if start is None else start % pool.size
    for offset in range(pool.size):
        candidate = pool.subnet((first + offset) % pool.size)
        if not any(candidate.overlaps(net) for net in relevant):
            return candidate
    return None
