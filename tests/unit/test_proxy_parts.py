"""The proxy's pure parts: address rules, ClientHello parsing, request parsing, policy loading."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import struct
from typing import TYPE_CHECKING

import pytest
from proxy_helpers import client_hello

from perstack_sandbox_proxy._http import Refusal, parse_head, split_authority
from perstack_sandbox_proxy._netrules import AddressRules, is_non_public
from perstack_sandbox_proxy._policy import Limits, PolicyError, load_policy, parse_policy
from perstack_sandbox_proxy._resolver import ResolveError, StaticResolver, SystemResolver
from perstack_sandbox_proxy._tls import TlsError, client_hello_body, server_name

if TYPE_CHECKING:
    from pathlib import Path


# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["203.0.113.7", "198.51.100.1", "192.0.2.10", "8.8.8.8", "2001:db8::1", "2606:4700::1"],
)
def test_documentation_and_public_addresses_are_dialable(address: str) -> None:
    """Documentation ranges are NOT refused: registries here resolve into them."""
    assert not is_non_public(ipaddress.ip_address(address))
    assert AddressRules().refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address",
    [
        "0.1.2.3",
        "10.9.8.7",
        "100.127.255.255",
        "127.255.0.1",
        "169.254.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.168.255.1",
        "198.19.0.1",
        "239.1.1.1",
        "250.0.0.1",
        "168.63.129.16",
        "::",
        "::1",
        "fe80::abcd",
        "fc00::1",
        "ff02::1",
        "64:ff9b::808:808",
        "64:ff9b:1::1",
        "2002::1",
        "2001:0:1::1",
        "::ffff:192.168.0.1",
        "::ffff:0:10.0.0.1",
        "::127.0.0.1",
    ],
)
def test_every_listed_non_public_address_is_refused(address: str) -> None:
    """Each range of docs/architecture.md decision 3 (and the embedded-IPv4 forms) is non-public."""
    assert AddressRules().refusal(ipaddress.ip_address(address)) == "non-public-address"


def test_mapped_public_address_is_judged_by_its_ipv4() -> None:
    """An IPv4-mapped public address is as dialable as the IPv4 address itself."""
    assert AddressRules().refusal(ipaddress.ip_address("::ffff:203.0.113.9")) is None


def test_test_cidr_admits_only_its_own_range_and_never_the_proxy_itself() -> None:
    """A test CIDR opens its range alone; the proxy's own address stays refused inside it."""
    rules = AddressRules(test_allow=(ipaddress.ip_network("127.0.0.0/24"),)).with_own(
        [ipaddress.ip_address("127.0.0.1")]
    )
    assert rules.refusal(ipaddress.ip_address("127.0.0.9")) is None
    assert rules.refusal(ipaddress.ip_address("127.0.1.9")) == "non-public-address"
    assert rules.refusal(ipaddress.ip_address("127.0.0.1")) == "own-address"
    assert rules.refusal(ipaddress.ip_address("10.0.0.1")) == "non-public-address"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("127.0.0.9", None),
        ("127.0.0.1", "own-address"),
        ("127.0.1.9", "non-public-address"),
        ("::ffff:127.0.0.1", "own-address"),
        ("169.254.169.254", "non-public-address"),
        ("8.8.8.8", None),
        ("not-an-ip", "bad-answer"),
    ],
)
def test_a_remembered_verdict_is_the_rules_own_on_every_ask(
    answer: str, expected: str | None
) -> None:
    """`verdict` answers as parsing plus `refusal` do, the first time and when remembered."""
    rules = AddressRules(test_allow=(ipaddress.ip_network("127.0.0.0/24"),)).with_own(
        [ipaddress.ip_address("127.0.0.1")]
    )
    for _ in range(2):
        address, reason = rules.verdict(answer)
        assert reason == expected
        assert (address is None) == (expected == "bad-answer")


# --- ClientHello -------------------------------------------------------------------------


def _records(handshake: bytes, size: int) -> bytes:
    """Wrap ``handshake`` in TLS records of at most ``size`` bytes each."""
    out = b""
    for start in range(0, len(handshake), size):
        fragment = handshake[start : start + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(fragment)) + fragment
    return out


def _hello(extensions: bytes) -> bytes:
    """Build a minimal ClientHello handshake message carrying ``extensions``."""
    body = b"\x03\x03" + b"\0" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _sni(*names: bytes) -> bytes:
    entries = b"".join(b"\x00" + struct.pack("!H", len(n)) + n for n in names)
    payload = struct.pack("!H", len(entries)) + entries
    return b"\x00\x00" + struct.pack("!H", len(payload)) + payload


def test_sni_of_a_real_client_hello_is_found() -> None:
    """Python's own ClientHello yields the server name it was created for."""
    body = client_hello_body(client_hello("api.example.com"))
    assert body is not None
    assert server_name(body) == "api.example.com"


def test_hello_fragmented_over_many_records_is_reassembled() -> None:
    """A handshake message split into 7-byte records is reassembled before parsing."""
    body = client_hello_body(_records(_hello(_sni(b"a.example.org")), 7))
    assert body is not None
    assert server_name(body) == "a.example.org"


def test_incomplete_hello_asks_for_more_bytes() -> None:
    """Every strict prefix of a ClientHello is 'need more', never a wrong answer."""
    data = client_hello("api.example.com")
    assert all(client_hello_body(data[:cut]) is None for cut in range(len(data)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not-tls"),
        (b"\x17\x03\x03\x00\x05hello", "not-tls"),
        (b"\x16\x02\x00\x00\x05hello", "not-tls"),
        (b"\x16\x03\x01\x00\x00", "malformed-client-hello"),
        (b"\x16\x03\x01\xff\xff", "malformed-client-hello"),
        (_records(b"\x02\x00\x00\x00", 100), "not-client-hello"),
    ],
    ids=["http", "application-data", "ssl2-version", "empty-record", "huge-record", "server-hello"],
)
def test_non_client_hello_bytes_are_refused(data: bytes, reason: str) -> None:
    """Bytes that are not TLS handshake records carrying a ClientHello are refused by class."""
    with pytest.raises(TlsError) as caught:
        client_hello_body(data)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [
        (_sni(b"a.example.org", b"b.example.org"), "malformed-client-hello"),
        (_sni(b"a.example.org") + _sni(b"b.example.org"), "malformed-client-hello"),
        (_sni(b"caf\xc3\xa9.example.org"), "malformed-sni"),
        (_sni(b"a.example.org") + b"\xfe\x0d\x00\x01\x00", "encrypted-client-hello"),
        (b"\x00\x00\x00\x09\x00", "malformed-client-hello"),
    ],
    ids=["two-names", "two-sni-extensions", "non-ascii-name", "ech", "truncated-extension"],
)
def test_ambiguous_or_hidden_server_names_are_refused(extensions: bytes, reason: str) -> None:
    """Two names, duplicate extensions, non-ASCII names and Encrypted ClientHello are refused."""
    body = client_hello_body(_records(_hello(extensions), 1000))
    assert body is not None
    with pytest.raises(TlsError) as caught:
        server_name(body)
    assert caught.value.reason == reason


def test_hello_without_extensions_has_no_server_name() -> None:
    """A ClientHello without any extension has no SNI (which the proxy then refuses)."""
    body = client_hello_body(_records(_hello(b""), 1000))
    assert body is not None
    assert server_name(body) is None


# --- request heads -----------------------------------------------------------------------


def test_connect_head_is_parsed_with_lowercased_header_names() -> None:
    """A well-formed CONNECT head yields method, target and headers."""
    head = parse_head(b"CONNECT a.example.org:443 HTTP/1.1\r\nHOST: a.example.org:443\r\n\r\n")
    assert (head.method, head.target, head.header("host")) == (
        "CONNECT",
        "a.example.org:443",
        "a.example.org:443",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"CONNECT  a.example.org:443 HTTP/1.1\r\n\r\n",
        b"CONNECT a.example.org:443 HTTP/2.0\r\n\r\n",
        b"CONNECT a.example.org:443 HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"CONNECT a.example.org:443 HTTP/1.1\r\nNoColon\r\n\r\n",
        b"CONNECT a.example.org:443 HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
        b"CONNECT\ta.example.org:443 HTTP/1.1\r\n\r\n",
    ],
    ids=["double-space", "http2-version", "space-in-name", "no-colon", "del-in-value", "tab"],
)
def test_sloppy_request_heads_are_refused(raw: bytes) -> None:
    """Anything looser than strict HTTP/1.x syntax is a 400."""
    with pytest.raises(Refusal) as caught:
        parse_head(raw)
    assert (caught.value.status, caught.value.reason) == (400, "malformed-request")


@pytest.mark.parametrize(
    "authority", ["a.example.org", "a.example.org:", ":443", "a:+443", "a:4 43"]
)
def test_authority_without_a_plain_port_is_malformed(authority: str) -> None:
    """An authority needs exactly one plain decimal port."""
    with pytest.raises(Refusal):
        split_authority(authority)


# --- policy ------------------------------------------------------------------------------


def test_policy_ignores_unknown_keys_and_reads_limits(tmp_path: Path) -> None:
    """Unknown keys are ignored; known limits override the defaults."""
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps(
            {
                "allowedDomains": ["api.example.com", "*.example.org"],
                "sandboxId": "s",
                "futureKey": {"x": 1},
                "limits": {"maxConnections": 7, "idleTimeout": 1.5, "futureLimit": 3},
            }
        )
    )
    policy = load_policy(path)
    assert policy.allowed_domains == ("api.example.com", "*.example.org")
    assert policy.limits == Limits(max_connections=7, idle_timeout=1.5)
    assert policy.addresses.test_allow == ()


def test_empty_policy_denies_everything() -> None:
    """A policy without allowedDomains allows no host at all (deny by default)."""
    assert parse_policy({}).allowed_domains == ()


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"allowedDomains": "api.example.com"},
        {"allowedDomains": [1]},
        {"allowedDomains": ["API.example.com"]},
        {"allowedDomains": ["xn--pple-43d.com"]},
        {"allowedDomains": ["127.0.0.1"]},
        {"sandboxId": 5},
        {"testAllowCidrs": ["127.0.0.1/8"]},
        {"testAllowCidrs": ["not-a-cidr"]},
        {"limits": []},
        {"limits": {"maxConnections": 2.5}},
        {"limits": {"idleTimeout": -1}},
        {"limits": {"idleTimeout": True}},
        {"limits": {"connectTimeout": "10"}},
    ],
    ids=[
        "not-an-object",
        "domains-not-a-list",
        "domain-not-a-string",
        "domain-not-canonical",
        "domain-punycode",
        "domain-ip",
        "sandbox-id-not-a-string",
        "cidr-host-bits",
        "cidr-garbage",
        "limits-not-an-object",
        "limit-fractional-count",
        "limit-negative",
        "limit-boolean",
        "limit-string",
    ],
)
def test_malformed_policy_is_rejected_with_a_message(document: object) -> None:
    """Every malformed policy raises PolicyError naming what is wrong."""
    with pytest.raises(PolicyError, match=r"\w"):
        parse_policy(document)


def test_unreadable_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    """A missing or non-JSON file is a PolicyError, not a traceback."""
    (tmp_path / "bad.json").write_text("{not json")
    for name in ("missing.json", "bad.json"):
        with pytest.raises(PolicyError, match="cannot read policy"):
            load_policy(tmp_path / name)


# --- resolvers ---------------------------------------------------------------------------


def test_system_resolver_answers_from_the_hosts_file_without_duplicates() -> None:
    """The getaddrinfo resolver returns each address once ('localhost' comes from /etc/hosts)."""
    answers = asyncio.run(SystemResolver().resolve("localhost"))
    assert "127.0.0.1" in answers
    assert len(answers) == len(set(answers))


def test_static_resolver_walks_its_answer_sets_and_logs_queries() -> None:
    """Successive queries get successive answer sets (the last repeats); unknown names fail."""
    resolver = StaticResolver({"a.example.org": [["192.0.2.1"], ["10.0.0.1"]]})
    answers = [asyncio.run(resolver.resolve("a.example.org")) for _ in range(3)]
    assert answers == [["192.0.2.1"], ["10.0.0.1"], ["10.0.0.1"]]
    with pytest.raises(ResolveError):
        asyncio.run(resolver.resolve("b.example.org"))
    assert resolver.queries == ["a.example.org"] * 3 + ["b.example.org"]
