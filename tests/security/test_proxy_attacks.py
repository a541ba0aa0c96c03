"""Through the proxy: every way of asking it for something it must refuse.

Each request goes from the hostile skill to the sandbox's own proxy, raw, so the test controls
every byte. A refusal must be the proxy's 403 with a precise reason, and the audit must show
that it was decided before any DNS lookup and without dialling anything (`resolved` empty,
`dialled` null). The proxy refuses before dialling, which is what makes aiming at metadata and
private addresses safe here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from support import registry_host

if TYPE_CHECKING:
    from support import Hostile

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

AUDIT_DEADLINE_S = 10  # the audit line travels proxy stdout -> engine attach -> audit.jsonl
REGISTRY = "REGISTRY"  # replaced at run time by the registry host (never written down)

METADATA_CONNECT = {
    "169.254.169.254:443": "host-ip-literal",  # AWS, GCP, Azure, OpenStack
    "100.100.100.200:443": "host-ip-literal",  # Alibaba
    "168.63.129.16:443": "host-ip-literal",  # Azure wireserver
    "[fd00:ec2::254]:443": "host-ip-literal",  # AWS over IPv6
    "metadata.google.internal:443": "not-allowed",
    "metadata.goog:443": "not-allowed",
    "metadata:443": "host-single-label",
    "instance-data.ec2.internal:443": "not-allowed",
    "metadata.azure.com:443": "not-allowed",
    "metadata.aliyuncs.com:443": "not-allowed",
}
METADATA_PLAIN = {
    "aws": "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254",
    "gcp": (
        "GET http://metadata.google.internal/computeMetadata/v1/ HTTP/1.1\r\n"
        "Host: metadata.google.internal\r\nMetadata-Flavor: Google"
    ),
    "azure": (
        "GET http://169.254.169.254/metadata/instance?api-version=2021-02-01 HTTP/1.1\r\n"
        "Host: 169.254.169.254\r\nMetadata: true"
    ),
    "alibaba": "GET http://100.100.100.200/latest/meta-data/ HTTP/1.1\r\nHost: 100.100.100.200",
    "origin-form": "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254",
    "allowed-host-plain": f"GET http://{REGISTRY}/ HTTP/1.1\r\nHost: {REGISTRY}",
    "allowed-host-absolute-https": f"GET https://{REGISTRY}/ HTTP/1.1\r\nHost: {REGISTRY}",
}
HOST_AND_CLUSTER = {
    "localhost:443": "host-single-label",
    "localhost.:443": "host-single-label",
    "127.0.0.1:443": "host-ip-literal",
    "[::1]:443": "host-ip-literal",
    "host.docker.internal:443": "not-allowed",
    "gateway.docker.internal:443": "not-allowed",
    "172.17.0.1:443": "host-ip-literal",
    "kubernetes:443": "host-single-label",
    "kubernetes.default.svc:443": "not-allowed",
    "kubernetes.default.svc.cluster.local:443": "not-allowed",
}
IP_NOTATIONS = {
    "2852039166:443": "host-ip-literal",  # decimal 169.254.169.254
    "0xa9fea9fe:443": "host-ip-literal",  # hex
    "0251.0376.0251.0376:443": "host-ip-literal",  # octal
    "0xa9.0xfe.0xa9.0xfe:443": "host-ip-literal",  # dotted hex
    "169.254.43518:443": "host-ip-literal",  # short form
    "127.1:443": "host-ip-literal",
    "10.0.0.1:443": "host-ip-literal",
    "172.16.0.1:443": "host-ip-literal",
    "192.168.0.1:443": "host-ip-literal",
    "100.64.0.1:443": "host-ip-literal",
    "[::ffff:169.254.169.254]:443": "host-ip-literal",  # IPv4-mapped
    "[::ffff:a9fe:a9fe]:443": "host-ip-literal",
    "[64:ff9b::a9fe:a9fe]:443": "host-ip-literal",  # NAT64
    "[2002:a9fe:a9fe::]:443": "host-ip-literal",  # 6to4
    "[fe80::1%25eth0]:443": "host-ip-literal",  # zone id
    "169.254.169.254.nip.io:443": "not-allowed",  # a name that resolves to metadata
}
ALLOWLIST_CONFUSION = {
    f"{REGISTRY}.evil.example:443": "not-allowed",  # suffix
    f"evil{REGISTRY}:443": "not-allowed",  # prefix
    f"evil-{REGISTRY}:443": "not-allowed",
    f"x.{REGISTRY}:443": "not-allowed",  # subdomain of an exact entry
    f"{REGISTRY}..:443": "host-empty-label",
    f"{REGISTRY}%2eevil.example:443": "host-bad-character",
    f"{REGISTRY}@evil.example:443": "host-bad-character",
    f"evil.example#{REGISTRY}:443": "host-bad-character",
}
IDN = {
    "xn--80ak6aa92e.com:443": "host-punycode",  # a look-alike of a well-known name
    f"xn--{REGISTRY}:443": "host-punycode",
    "ab--cd.example:443": "host-reserved-label",
    "\u0430pple.com:443": "host-non-ascii",  # Cyrillic a
    f"{REGISTRY}\uff0eevil.example:443": "host-non-ascii",  # fullwidth dot
    f"{REGISTRY}\u200b:443": "host-non-ascii",  # zero-width space
}
PORTS = {
    f"{REGISTRY}:80": "403 port-not-allowed",
    f"{REGISTRY}:8443": "403 port-not-allowed",
    f"{REGISTRY}:22": "403 port-not-allowed",
    f"{REGISTRY}:3128": "403 port-not-allowed",
    f"{REGISTRY}:0443": "400 malformed-authority",
    f"{REGISTRY}:65536": "400 malformed-authority",
}


def real(text: str) -> str:
    """Put the registry host into a template."""
    return text.replace(REGISTRY, registry_host())


async def audit_decisions(hostile: Hostile, raw_host: str) -> list[dict[str, Any]]:
    """Wait (bounded) for the audit's decision lines about `raw_host`, and return them."""
    with anyio.fail_after(AUDIT_DEADLINE_S):
        while True:
            found = [
                line
                for line in hostile.audit_lines()
                if line.get("event") == "decision" and line.get("rawHost") == raw_host
            ]
            if found:
                return found
            await anyio.sleep(0.05)


async def refused_before_dns(hostile: Hostile, authority: str, reason: str) -> None:
    """CONNECT to `authority` is answered 403 `reason`, decided before any lookup or dial."""
    answer = await hostile.probe(f"emit(connect_via_proxy({authority!r}))")
    assert answer == f"403 {reason}"
    if not authority.isascii():
        return  # the audit escapes the raw bytes; the answer above is the proof
    host = authority.rsplit(":", 1)[0]
    decisions = await audit_decisions(hostile, host)
    assert {(d["decision"], d["reason"]) for d in decisions} == {("deny", reason)}
    assert all(d["resolved"] == [] and d["dialled"] is None for d in decisions)


@pytest.mark.parametrize(("authority", "reason"), sorted(METADATA_CONNECT.items()))
async def test_metadata_endpoints_by_ip_and_by_name_are_refused_via_connect(
    hostile: Hostile, authority: str, reason: str
) -> None:
    """CONNECT to cloud metadata (AWS, GCP, Azure, Alibaba) is refused before any lookup.

    Fails when: IP literals pass canonicalisation (checked by hand: the `ip-literal` rule
    disabled in proxy/hosts.py gives `not-allowed` instead), or the allowlist admits the name.
    """
    await refused_before_dns(hostile, authority, reason)


@pytest.mark.parametrize("name", sorted(METADATA_PLAIN))
async def test_plain_http_is_refused_whatever_it_asks_for(hostile: Hostile, name: str) -> None:
    """Every plain-HTTP request (metadata, or even the allowed host) gets 403 plain-http-refused.

    Fails when: the proxy forwards absolute-form or origin-form requests (not checked by
    hand: a forwarding proxy would dial the metadata addresses).
    """
    head = real(METADATA_PLAIN[name]) + "\r\n\r\n"
    answer = await hostile.probe(f"emit(proxy_exchange({head.encode()!r}))")
    assert answer == "403 plain-http-refused"


@pytest.mark.parametrize(("authority", "reason"), sorted(HOST_AND_CLUSTER.items()))
async def test_localhost_docker_host_and_cluster_names_are_refused(
    hostile: Hostile, authority: str, reason: str
) -> None:
    """Loopback, the Docker host gateway and Kubernetes service names are refused by the proxy.

    Fails when: single-label names or IP literals are let through to the allowlist (which
    then refuses `not-allowed`, a different reason), or the allowlist admits them.
    """
    await refused_before_dns(hostile, authority, reason)


@pytest.mark.parametrize(("authority", "reason"), sorted(IP_NOTATIONS.items()))
async def test_every_ip_notation_is_refused_as_an_ip_literal(
    hostile: Hostile, authority: str, reason: str
) -> None:
    """Decimal, hex, octal, short, mapped, NAT64, 6to4 and zone-id forms are all IP literals.

    Fails when: the number-label rule of proxy/hosts.py is disabled (checked by hand: the
    answer becomes `not-allowed`, still before any DNS, so nothing is dialled).
    """
    await refused_before_dns(hostile, authority, reason)


@pytest.mark.parametrize(("template", "reason"), sorted(ALLOWLIST_CONFUSION.items()))
async def test_suffix_and_prefix_confusion_with_the_allowed_host_is_refused(
    hostile: Hostile, template: str, reason: str
) -> None:
    """Names that merely contain the allowed host are not the allowed host.

    Fails when: matching uses `endswith`/`in` instead of exact and `*.`-subdomain rules (not
    checked by hand: the proxy would then resolve and dial names outside the allowlist).
    """
    await refused_before_dns(hostile, real(template), reason)


@pytest.mark.parametrize(("template", "reason"), sorted(IDN.items()))
async def test_punycode_and_unicode_hosts_are_refused(
    hostile: Hostile, template: str, reason: str
) -> None:
    """Punycode labels, reserved `ab--` labels and any non-ASCII byte are refused.

    Fails when: the punycode rule of proxy/hosts.py is disabled (checked by hand:
    `xn--` names then get `not-allowed`).
    """
    await refused_before_dns(hostile, real(template), reason)


@pytest.mark.parametrize(("template", "expected"), sorted(PORTS.items()))
async def test_ports_other_than_443_are_refused_even_for_the_allowed_host(
    hostile: Hostile, template: str, expected: str
) -> None:
    """CONNECT goes to 443 only; odd spellings of a port are malformed.

    Fails when: the port check is removed (the allowed host on port 80 would then tunnel and
    answer 200; not checked by hand, to dial nothing but port 443).
    """
    answer = await hostile.probe(f"emit(connect_via_proxy({real(template)!r}))")
    assert answer == expected


async def test_a_tunnel_to_the_allowed_host_cannot_carry_tls_for_another_name(
    hostile: Hostile,
) -> None:
    """SNI mismatch: the proxy closes the tunnel before the ClientHello reaches the upstream.

    Fails when: the proxy's SNI check is disabled (checked by hand: `_checked_hello` returning
    at once makes the handshake complete, `tls-ok`).
    """
    authority = f"{registry_host()}:443"
    answer = await hostile.probe(f"emit(tls_through_tunnel({authority!r}, 'example.org'))")
    assert answer == "tls-failed:SSLEOFError"
    reasons = {d["reason"] for d in await audit_decisions(hostile, registry_host())}
    assert "sni-mismatch" in reasons


async def test_a_tunnel_without_sni_is_closed(hostile: Hostile) -> None:
    """A ClientHello without a server name is refused (`sni-missing`).

    Fails when: the proxy's SNI check is disabled (checked by hand: the handshake completes).
    """
    authority = f"{registry_host()}:443"
    answer = await hostile.probe(f"emit(tls_through_tunnel({authority!r}, None))")
    assert answer == "tls-failed:SSLEOFError"
    reasons = {d["reason"] for d in await audit_decisions(hostile, registry_host())}
    assert "sni-missing" in reasons


@pytest.mark.parametrize(
    ("host_header", "expected"),
    [
        ("example.org", "403 host-header-mismatch"),
        ("169.254.169.254", "403 host-header-mismatch"),
        ("REGISTRY:80", "403 host-header-mismatch"),
        ("REGISTRY\r\nHost: example.org", "400 malformed-request"),
    ],
)
async def test_host_header_smuggling_is_refused(
    hostile: Hostile, host_header: str, expected: str
) -> None:
    """A CONNECT to the allowed host whose Host header names another target is refused.

    Fails when: the Host-header check of proxy/_tunnel.py is removed (checked by hand: the
    three mismatch cases are then answered 200).
    """
    authority = f"{registry_host()}:443"
    code = f"emit(connect_via_proxy({authority!r}, host_header={real(host_header)!r}))"
    assert await hostile.probe(code) == expected


async def test_a_second_request_on_a_refused_connection_is_never_read(hostile: Hostile) -> None:
    """After a refusal the proxy closes the connection: a pipelined request gets no answer.

    Fails when: the proxy keeps connections alive after a refusal (not checked by hand).
    """
    first = b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"
    second = real(f"CONNECT {REGISTRY}:443 HTTP/1.1\r\nHost: {REGISTRY}:443\r\n\r\n").encode()
    code = (
        "import socket\n"
        "s = socket.create_connection(proxy_address(), timeout=5)\n"
        f"s.sendall({first + second!r})\n"
        "data = b''\n"
        "while chunk := s.recv(65536): data += chunk\n"
        "emit(data.count(b'HTTP/1.1 '))"
    )
    assert await hostile.probe(code) == 1
