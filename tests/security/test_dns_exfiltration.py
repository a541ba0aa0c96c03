"""DNS exfiltration: resolving names, and raw DNS to public resolvers and to Docker's resolver.

No resolver is reachable from the sandbox: Docker's embedded resolver forwards only inside the
sandbox's own namespace (to 127.0.0.1, where nothing listens), and direct packets to public
resolvers have no way out. The module's guard runs first (see conftest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support import UNREACHABLE, registry_host

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("no_route_out")]

NAMES = (
    "host.docker.internal",
    "gateway.docker.internal",
    "metadata.google.internal",
    "metadata",
    "instance-data.ec2.internal",
    "kubernetes",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "exfiltrated-secret-6f1a.invalid",
)
RESOLVERS = ("8.8.8.8", "1.1.1.1", "9.9.9.9")


@pytest.fixture(scope="module")
async def outcomes(hostile: Hostile) -> dict[str, str]:
    """Run every DNS probe of this module once, concurrently."""
    names = [*NAMES, "REGISTRY"]
    code = (
        f"reg = {registry_host()!r}\nnames = {names!r}\nresolvers = {RESOLVERS!r}\n"
        "calls = {'name ' + n: (resolve, reg if n == 'REGISTRY' else n) for n in names}\n"
        "calls |= {'udp ' + r: (dns_query, r, reg) for r in resolvers}\n"
        "calls |= {'udp-connected ' + r: (udp_exchange, r, 53) for r in resolvers}\n"
        "calls |= {'tcp ' + r: (tcp_connect, r, 53) for r in resolvers}\n"
        "calls['docker-resolver'] = (dns_query, '127.0.0.11', reg)\n"
        "calls['docker-resolver-tcp'] = (lambda: dns_query('127.0.0.11', reg, tcp=True),)\n"
        "calls['resolv.conf'] = (lambda: open('/etc/resolv.conf').read(),)\n"
        "emit(in_parallel(calls))"
    )
    found: dict[str, str] = await hostile.probe(code)
    return found


@pytest.mark.parametrize("name", [*NAMES, "REGISTRY"])
async def test_no_name_resolves_not_even_an_allowed_host(
    outcomes: dict[str, str], name: str
) -> None:
    """Name resolution fails with a temporary failure: no resolver ever answers.

    Fails when: the sandbox's network has a way out (checked by hand: with `inhibit_ipv4`
    dropped the module's guard fails first, as intended). On this engine (Docker 20.10) the
    explicit `dns=127.0.0.1` is not what stops it: without it, names still do not resolve from
    an internal network (checked by hand, for the registry's name only).
    """
    assert outcomes[f"name {name}"] == "EAI_AGAIN"


@pytest.mark.parametrize("resolver", RESOLVERS)
async def test_raw_dns_to_public_resolvers_goes_nowhere(
    outcomes: dict[str, str], resolver: str
) -> None:
    """TCP port 53 to public resolvers fails locally; UDP queries are never answered.

    Fails when: the sandbox network is not internal (the guard fails first).
    """
    assert outcomes[f"udp {resolver}"] in {*UNREACHABLE, "timeout"}
    assert outcomes[f"udp-connected {resolver}"] == "timeout"
    assert outcomes[f"tcp {resolver}"] in UNREACHABLE


async def test_dockers_embedded_resolver_answers_nothing_outside(outcomes: dict[str, str]) -> None:
    """Docker's resolver in the sandbox (127.0.0.11) gives no answer for an outside name.

    Fails when: the sandbox's network has a way out (the guard fails first; see above).
    """
    assert outcomes["resolv.conf"].split()[:2] == ["nameserver", "127.0.0.11"]
    assert outcomes["docker-resolver"] in {"timeout", "answered:rcode=2:answers=0"}
    assert not outcomes["docker-resolver-tcp"].endswith(tuple(f"answers={n}" for n in range(1, 10)))
