"""The catalogue of refused targets: each is refused, and refused before anything leaves.

The stub resolver would answer ANY name with the loopback echo upstream (inside the test
CIDR), so a target that slipped through would be resolved and dialled; every case asserts
on the resolver's query log and on the dial log that this did not happen.
"""

from __future__ import annotations

import pytest
from proxy_helpers import (
    ProxyHarness,
    RecordingResolver,
    client_hello,
    connect_request,
    exchange,
    open_tunnel,
    read_response_head,
    read_until_eof,
    running_proxy,
    status_of,
)

# (id, raw request bytes, expected status, expected reason code in the audit)
PRE_DNS_REFUSALS = [
    ("unlisted-domain", connect_request("evil.com:443"), 403, "not-allowed"),
    ("unlisted-subdomain-of-exact", connect_request("x.api.example.com:443"), 403, "not-allowed"),
    ("suffix-confusion", connect_request("api.example.com.evil.com:443"), 403, "not-allowed"),
    ("prefix-confusion", connect_request("evilapi.example.com:443"), 403, "not-allowed"),
    ("hyphen-prefix-confusion", connect_request("evil-api.example.com:443"), 403, "not-allowed"),
    ("wildcard-base-not-covered", connect_request("example.org:443"), 403, "not-allowed"),
    ("wildcard-suffix-confusion", connect_request("evilexample.org:443"), 403, "not-allowed"),
    ("uppercase-unlisted", connect_request("EVIL.COM:443"), 403, "not-allowed"),
    ("trailing-dot-unlisted", connect_request("evil.com.:443"), 403, "not-allowed"),
    ("double-trailing-dot", connect_request("api.example.com..:443"), 403, "host-empty-label"),
    ("double-dot-inside", connect_request("api..example.com:443"), 403, "host-empty-label"),
    ("leading-dot", connect_request(".api.example.com:443"), 403, "host-empty-label"),
    ("ipv4-dotted", connect_request("127.0.0.2:443"), 403, "host-ip-literal"),
    ("ipv4-decimal", connect_request("2130706434:443"), 403, "host-ip-literal"),
    ("ipv4-hex", connect_request("0x7f000002:443"), 403, "host-ip-literal"),
    ("ipv4-octal", connect_request("0177.0.0.2:443"), 403, "host-ip-literal"),
    ("ipv4-short", connect_request("127.2:443"), 403, "host-ip-literal"),
    ("ipv4-dotted-hex", connect_request("0x7f.0.0.2:443"), 403, "host-ip-literal"),
    ("ipv6-loopback", connect_request("[::1]:443"), 403, "host-ip-literal"),
    ("ipv6-zone-id", connect_request("[fe80::1%25eth0]:443"), 403, "host-ip-literal"),
    ("ipv6-mapped", connect_request("[::ffff:127.0.0.2]:443"), 403, "host-ip-literal"),
    ("ipv6-nat64", connect_request("[64:ff9b::a9fe:a9fe]:443"), 403, "host-ip-literal"),
    ("ipv6-6to4", connect_request("[2002:a9fe:a9fe::1]:443"), 403, "host-ip-literal"),
    ("metadata-ip", connect_request("169.254.169.254:443"), 403, "host-ip-literal"),
    ("metadata-name", connect_request("metadata.google.internal:443"), 403, "not-allowed"),
    ("metadata-single-label", connect_request("metadata:443"), 403, "host-single-label"),
    ("localhost", connect_request("localhost:443"), 403, "host-single-label"),
    ("localhost-trailing-dot", connect_request("localhost.:443"), 403, "host-single-label"),
    ("localhost-subdomain", connect_request("localhost.localdomain:443"), 403, "not-allowed"),
    ("punycode", connect_request("xn--pple-43d.example.org:443"), 403, "host-punycode"),
    ("reserved-ab-label", connect_request("ab--cd.example.org:443"), 403, "host-reserved-label"),
    (
        "unicode-homograph",
        "CONNECT \u0430pi.example.com:443 HTTP/1.1\r\n\r\n".encode(),
        403,
        "host-non-ascii",
    ),
    ("underscore", connect_request("a_b.example.org:443"), 403, "host-bad-character"),
    ("percent-encoded-dot", connect_request("api%2eexample.com:443"), 403, "host-bad-character"),
    ("userinfo", connect_request("user@api.example.com:443"), 403, "host-bad-character"),
    ("wildcard-as-host", connect_request("*.example.org:443"), 403, "host-wildcard"),
    (
        "cr-in-authority",
        b"CONNECT api.example.com\r:443 HTTP/1.1\r\n\r\n",
        400,
        "malformed-request",
    ),
    (
        "lf-in-authority",
        b"CONNECT api.example.com\n:443 HTTP/1.1\r\n\r\n",
        400,
        "malformed-request",
    ),
    (
        "nul-in-authority",
        b"CONNECT api.example.com\0:443 HTTP/1.1\r\n\r\n",
        400,
        "malformed-request",
    ),
    (
        "nul-before-allowed-host",
        b"CONNECT evil.com\0.api.example.com:443 HTTP/1.1\r\n\r\n",
        400,
        "malformed-request",
    ),
    ("port-80", connect_request("api.example.com:80"), 403, "port-not-allowed"),
    ("port-8443", connect_request("api.example.com:8443"), 403, "port-not-allowed"),
    ("port-443-leading-zero", connect_request("api.example.com:0443"), 400, "malformed-authority"),
    ("port-missing", connect_request("api.example.com"), 400, "malformed-authority"),
    ("port-out-of-range", connect_request("api.example.com:65979"), 400, "malformed-authority"),
    (
        "plain-http-absolute-form",
        b"GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        403,
        "plain-http-refused",
    ),
    (
        "plain-http-origin-form",
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        403,
        "plain-http-refused",
    ),
    (
        "absolute-form-healthz",
        b"GET http://healthz/healthz HTTP/1.1\r\n\r\n",
        403,
        "plain-http-refused",
    ),
    ("connect-to-healthz", connect_request("healthz:443"), 403, "host-single-label"),
    (
        "host-header-mismatch",
        connect_request("api.example.com:443", "evil.com:443"),
        403,
        "host-header-mismatch",
    ),
    (
        "host-header-other-port",
        connect_request("api.example.com:443", "api.example.com:80"),
        403,
        "host-header-mismatch",
    ),
    (
        "duplicate-host-header",
        b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.com\r\n\r\n",
        400,
        "malformed-request",
    ),
    (
        "obs-fold-header",
        b"CONNECT api.example.com:443 HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        400,
        "malformed-request",
    ),
    ("http-0.9-style", b"CONNECT api.example.com:443\r\n\r\n", 400, "malformed-request"),
]

# Allowed names whose answers must be refused: (id, answer sets, expected reason).
ADDRESS_REFUSALS = [
    ("private-10", [["10.0.0.1"]], "non-public-address"),
    ("private-192-168", [["192.168.1.1"]], "non-public-address"),
    ("private-172-16", [["172.16.0.1"]], "non-public-address"),
    ("cgnat", [["100.64.0.1"]], "non-public-address"),
    ("link-local-metadata", [["169.254.169.254"]], "non-public-address"),
    ("azure-wireserver", [["168.63.129.16"]], "non-public-address"),
    ("this-network", [["0.0.0.0"]], "non-public-address"),  # noqa: S104 - an answer, not a bind
    ("benchmarking", [["198.18.0.1"]], "non-public-address"),
    ("multicast", [["224.0.0.1"]], "non-public-address"),
    ("broadcast", [["255.255.255.255"]], "non-public-address"),
    ("ipv6-loopback", [["::1"]], "non-public-address"),
    ("ipv6-unique-local", [["fd00::1"]], "non-public-address"),
    ("ipv6-link-local-zone", [["fe80::1%eth0"]], "non-public-address"),
    ("ipv6-mapped-private", [["::ffff:10.0.0.1"]], "non-public-address"),
    ("ipv6-compatible-private", [["::10.0.0.1"]], "non-public-address"),
    ("nat64-metadata", [["64:ff9b::a9fe:a9fe"]], "non-public-address"),
    ("6to4", [["2002:a9fe:a9fe::1"]], "non-public-address"),
    ("teredo", [["2001:0:a9fe:a9fe::1"]], "non-public-address"),
    ("mixed-public-and-private", [["127.0.0.2", "192.168.0.1"]], "non-public-address"),
    ("mixed-private-first", [["10.1.1.1", "127.0.0.2"]], "non-public-address"),
    ("proxy-own-address", [["127.0.0.1"]], "own-address"),
    ("proxy-own-address-mapped", [["::ffff:127.0.0.1"]], "own-address"),
    ("not-an-address", [["not-an-ip"]], "bad-answer"),
]


def _assert_refused_quietly(harness: ProxyHarness, reason: str, *, looked_up: bool) -> None:
    decisions = harness.decisions()
    assert [d["decision"] for d in decisions] == ["deny"]
    assert decisions[0]["reason"] == reason
    assert harness.dials == []
    assert harness.upstream.received == []
    if not looked_up:
        assert harness.resolver.queries == []


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [case[1:] for case in PRE_DNS_REFUSALS],
    ids=[case[0] for case in PRE_DNS_REFUSALS],
)
def test_target_is_refused_before_any_lookup(raw: bytes, status: int, reason: str) -> None:
    """A refused target gets its status and reason, with no DNS query and no dial."""
    with running_proxy() as harness:
        response = exchange(harness, raw)
        assert status_of(response) == status
        assert response.endswith(f"\r\n\r\n{reason}\n".encode())
        _assert_refused_quietly(harness, reason, looked_up=False)


@pytest.mark.parametrize(
    ("answers", "reason"),
    [case[1:] for case in ADDRESS_REFUSALS],
    ids=[case[0] for case in ADDRESS_REFUSALS],
)
def test_allowed_name_with_a_refused_answer_is_never_dialled(
    answers: list[list[str]], reason: str
) -> None:
    """An allowed name that resolves to any non-public or own address is refused, undialled."""
    resolver = RecordingResolver({"api.example.com": answers})
    with running_proxy(resolver=resolver) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 403
        assert b"127.0.0" not in response  # the client never learns an address
        _assert_refused_quietly(harness, reason, looked_up=True)


@pytest.mark.parametrize(
    ("sni", "reason"),
    [("evil.com", "sni-mismatch"), (None, "sni-missing"), ("www.example.org", "sni-mismatch")],
    ids=["sni-other-host", "sni-missing", "sni-other-allowed-host"],
)
def test_tunnel_with_a_wrong_sni_is_closed_before_any_byte_reaches_upstream(
    sni: str | None, reason: str
) -> None:
    """A ClientHello whose SNI is missing or names another host ends the tunnel unforwarded."""
    with running_proxy() as harness:
        sock = open_tunnel(harness, "api.example.com:443", sni)
        assert read_until_eof(sock) == b""
        sock.close()
        harness.wait_for(lambda: len(harness.upstream.received) == 1, "the upstream connection")
        assert harness.upstream.received == [bytearray()]
        assert [(d["decision"], d["reason"]) for d in harness.decisions()] == [("deny", reason)]


@pytest.mark.parametrize(
    "first_bytes",
    [b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\0\0\x01\0"],
    ids=["plain-http-inside-tunnel", "tls-but-not-client-hello"],
)
def test_tunnel_that_does_not_start_with_a_client_hello_is_closed(first_bytes: bytes) -> None:
    """Bytes other than a ClientHello after the 200 end the tunnel without forwarding them."""
    with running_proxy() as harness, harness.open() as sock:
        sock.sendall(connect_request("api.example.com:443"))
        assert status_of(read_response_head(sock)) == 200
        sock.sendall(first_bytes)
        assert read_until_eof(sock) == b""
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        assert harness.decisions()[0]["decision"] == "deny"
        assert all(not received for received in harness.upstream.received)


@pytest.mark.parametrize(
    "second",
    [connect_request("api.example.com:443"), b"GET /healthz HTTP/1.1\r\n\r\n"],
    ids=["second-request-connect", "second-request-healthz"],
)
def test_second_request_on_a_kept_alive_connection_is_never_answered(second: bytes) -> None:
    """After a refused first request the connection closes; a pipelined second gets nothing."""
    first = b"GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    with running_proxy() as harness:
        response = exchange(harness, first + second)
        assert response.count(b"HTTP/1.1 ") == 1
        assert status_of(response) == 403
        assert len(harness.decisions()) == 1
        assert harness.resolver.queries == []


def test_dns_rebinding_dials_the_address_that_was_checked() -> None:
    """With a rebinding resolver (test-CIDR answer, then private) the checked IP is dialled."""
    resolver = RecordingResolver({"api.example.com": [["127.0.0.2"], ["10.0.0.1"]]})
    with running_proxy(resolver=resolver) as harness:
        sock = open_tunnel(harness, "api.example.com:443", "api.example.com")
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the decision line")
        sock.close()
        assert resolver.queries == ["api.example.com"]
        assert harness.dials == [("127.0.0.2", 443)]
        decision = harness.decisions()[0]
        assert (decision["resolved"], decision["dialled"]) == (["127.0.0.2"], "127.0.0.2")


def test_rebinding_second_answer_is_refused_on_the_next_connection() -> None:
    """The next CONNECT resolves afresh, sees the private answer, and is refused undialled."""
    resolver = RecordingResolver({"api.example.com": [["127.0.0.2"], ["10.0.0.1"]]})
    with running_proxy(resolver=resolver) as harness:
        open_tunnel(harness, "api.example.com:443", "api.example.com").close()
        harness.wait_for(lambda: len(harness.decisions()) == 1, "the first decision")
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 403
        assert harness.dials == [("127.0.0.2", 443)]


def test_upstream_in_loopback_is_refused_without_the_test_cidr() -> None:
    """Without testAllowCidrs a name resolving to a 127.0.0.x upstream is refused, undialled."""
    from proxy_helpers import policy  # noqa: PLC0415 - local: this test alone changes the policy

    with running_proxy(policy(cidrs=())) as harness:
        response = exchange(harness, connect_request("api.example.com:443"))
        assert status_of(response) == 403
        _assert_refused_quietly(harness, "non-public-address", looked_up=True)


def test_client_hello_helper_produces_the_requested_sni() -> None:
    """The test helper's ClientHello is a TLS handshake record (guards the SNI tests above)."""
    assert client_hello("api.example.com")[:1] == b"\x16"
    assert b"api.example.com" in client_hello("api.example.com")
    assert b"api.example.com" not in client_hello(None)
