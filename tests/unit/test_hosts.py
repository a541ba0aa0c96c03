"""The host spelling table shared by config validation and the proxy.

See docs/architecture.md, decisions 4 and 5.
"""

from __future__ import annotations

import pytest

from perstack_sandbox_proxy.hosts import (
    HostRejected,
    canonicalise_host,
    canonicalise_pattern,
    match_host,
    shared_suffix,
)

# (spelling, canonical form or "!reason-code", why). Every row goes through canonicalise_pattern
# (the allowlist entry); rows without a wildcard also go through canonicalise_host.
HOST_TABLE: list[tuple[str, str, str]] = [
    # accepted
    ("example.com", "example.com", "plain LDH host"),
    ("EXAMPLE.COM", "example.com", "hosts are case-insensitive: one lowercase spelling"),
    ("Api.Example.Com", "api.example.com", "mixed case lowercased"),
    ("example.com.", "example.com", "one trailing dot (the FQDN form) is trimmed"),
    ("a.b.c.d.example.com", "a.b.c.d.example.com", "any depth is fine"),
    ("123.example.com", "123.example.com", "numeric labels are fine when not the last one"),
    ("a-b.example.com", "a-b.example.com", "inner hyphen is LDH"),
    ("x.io", "x.io", "one-letter label"),
    ("1x.example.com", "1x.example.com", "labels may start with a digit (RFC 1123)"),
    ("example.123abc", "example.123abc", "a last label that is not a number is not an IP"),
    (f"{'a' * 63}.com", f"{'a' * 63}.com", "63-character label is the maximum"),
    (
        ".".join(["a" * 63] * 3 + ["b" * 61]),
        ".".join(["a" * 63] * 3 + ["b" * 61]),
        "253 characters total is the maximum",
    ),
    ("*.example.com", "*.example.com", "leading wildcard over a registrable domain"),
    ("*.EXAMPLE.com.", "*.example.com", "wildcard entries are canonicalised like hosts"),
    ("*.api.example.co.uk", "*.api.example.co.uk", "wildcard below a registrable domain"),
    ("*.example.co.uk", "*.example.co.uk", "registrable domain under a two-label suffix"),
    ("*.foo.internal-corp", "*.foo.internal-corp", "unknown TLD: the base is not a suffix"),
    # empty and length
    ("", "!empty", "nothing to allow"),
    (".", "!empty", "only the trailing dot, which is trimmed"),
    ("example..com", "!empty-label", "empty label between dots"),
    (".example.com", "!empty-label", "leading dot is an empty label"),
    ("example.com..", "!empty-label", "only ONE trailing dot is trimmed"),
    (f"{'a' * 64}.com", "!label-too-long", "DNS labels are at most 63 octets"),
    (".".join(["a" * 63] * 4), "!too-long", "DNS names are at most 253 characters"),
    # non-ASCII and punycode: homograph attacks
    ("\u0430pple.com", "!non-ascii", "Cyrillic a: the classic homograph of apple.com"),
    ("b\u00fccher.example", "!non-ascii", "any IDN in Unicode form"),
    ("example\u3002com", "!non-ascii", "ideographic full stop, a dot look-alike"),
    ("ex\u200bample.com", "!non-ascii", "zero-width space hides inside a name"),
    ("xn--80ak6aa92e.com", "!punycode", "punycode of a Cyrillic look-alike"),
    ("XN--80AK6AA92E.com", "!punycode", "punycode in upper case"),
    ("api.xn--bcher-kva.example", "!punycode", "punycode in any label, not just the first"),
    ("ab--cd.example.com", "!reserved-label", "'--' in positions 3-4 is reserved for IDNA"),
    ("zz--x.com", "!reserved-label", "any ??-- prefix, not only xn--"),
    # characters
    ("exa mple.com", "!bad-character", "whitespace"),
    (" example.com", "!bad-character", "leading whitespace is not trimmed away"),
    ("example.com\t", "!bad-character", "tab"),
    ("example.com\n", "!bad-character", "newline (header injection)"),
    ("exam\x00ple.com", "!bad-character", "NUL byte"),
    ("under_score.example.com", "!bad-character", "'_' is not LDH (decided in hosts.py)"),
    ("user@example.com", "!bad-character", "userinfo smuggling"),
    ("example.com%2f", "!bad-character", "percent-encoding"),
    ("example.com/path", "!bad-character", "a path is not part of a host"),
    ("example.com\\evil.com", "!bad-character", "backslash, a path separator to some parsers"),
    ("-example.com", "!bad-character", "label starting with '-'"),
    ("example-.com", "!bad-character", "label ending with '-'"),
    ("exa!mple.com", "!bad-character", "punctuation"),
    # IP literals in every notation
    ("1.2.3.4", "!ip-literal", "dotted decimal"),
    ("127.0.0.1", "!ip-literal", "loopback"),
    ("169.254.169.254", "!ip-literal", "cloud metadata address"),
    ("2130706433", "!ip-literal", "integer form of 127.0.0.1"),
    ("0x7f000001", "!ip-literal", "hex integer form"),
    ("0x7f.1", "!ip-literal", "hex short form"),
    ("0X7F.0.0.1", "!ip-literal", "hex in upper case"),
    ("0177.0.0.1", "!ip-literal", "octal form"),
    ("127.1", "!ip-literal", "short dotted form"),
    ("example.0x7f", "!ip-literal", "a hex-like last label makes the whole name an IP"),
    ("example.0x", "!ip-literal", "'0x' alone parses as the number 0 in WHATWG URL"),
    ("example.123", "!ip-literal", "an all-numeric last label makes the whole name an IP"),
    ("1.2.3.4.", "!ip-literal", "trailing dot does not hide an address"),
    ("[::1]", "!ip-literal", "bracketed IPv6"),
    ("::1", "!ip-literal", "bare IPv6"),
    ("2001:db8::1", "!ip-literal", "IPv6 documentation prefix"),
    ("::ffff:127.0.0.1", "!ip-literal", "IPv4-mapped IPv6"),
    ("fe80::1%eth0", "!ip-literal", "IPv6 with zone id"),
    ("[fe80::1%25eth0]", "!ip-literal", "bracketed IPv6 with encoded zone id"),
    # single labels
    ("localhost", "!single-label", "loopback by name"),
    ("metadata", "!single-label", "cloud metadata service name"),
    ("LOCALHOST.", "!single-label", "single label in FQDN form"),
    # ports and schemes
    ("example.com:443", "!port", "a port belongs to the request, not the allowlist"),
    ("example.com:", "!port", "empty port"),
    ("1.2.3.4:80", "!port", "address with a port"),
    ("https://example.com", "!scheme", "a URL, not a host"),
    ("HTTP://example.com", "!scheme", "scheme in upper case"),
    ("://example.com", "!scheme", "empty scheme"),
    # wildcards
    ("*", "!wildcard", "matches everything"),
    ("api.*.example.com", "!wildcard", "middle wildcard"),
    ("example.*", "!wildcard", "trailing wildcard"),
    ("*example.com", "!wildcard", "wildcard without the dot"),
    ("*.*.example.com", "!wildcard", "more than one wildcard"),
    ("**.example.com", "!wildcard", "double star"),
    ("*.com", "!public-suffix-wildcard", "every .com site"),
    ("*.co.uk", "!public-suffix-wildcard", "two-label public suffix"),
    ("*.COM.", "!public-suffix-wildcard", "public suffix in another spelling"),
    # Issue 12 reverses issue 2 here: a private-section suffix is accepted (config validation
    # warns that every tenant is reachable, `validate --strict` refuses it); ICANN ones are not.
    ("*.github.io", "*.github.io", "private-section suffix: accepted, warned about"),
    ("*.googleapis.com", "*.googleapis.com", "private-section suffix Gemini skills list"),
    ("*.localhost", "!single-label", "wildcard over a single label"),
    ("*.1.2.3.4", "!ip-literal", "wildcard over an address"),
    ("*.xn--p1ai", "!punycode", "wildcard over a punycode TLD"),
]


def _outcome(function: object, spelling: str) -> str:
    assert callable(function)
    try:
        return str(function(spelling))
    except HostRejected as exc:
        return f"!{exc.reason}"


def test_the_table_has_at_least_sixty_distinct_spellings() -> None:
    """The issue asks for a table of at least 60 spellings; duplicates would inflate it."""
    spellings = [row[0] for row in HOST_TABLE]
    assert len(set(spellings)) == len(spellings) >= 60


@pytest.mark.parametrize(("spelling", "expected", "why"), HOST_TABLE)
def test_allowlist_entry_spelling(spelling: str, expected: str, why: str) -> None:
    """Each allowlist spelling is accepted as its canonical form or rejected for its reason."""
    assert _outcome(canonicalise_pattern, spelling) == expected, why


@pytest.mark.parametrize(
    ("spelling", "expected", "why"), [row for row in HOST_TABLE if "*" not in row[0]]
)
def test_request_host_spelling(spelling: str, expected: str, why: str) -> None:
    """A request host and an exact allowlist entry share one canonical spelling and reason."""
    assert _outcome(canonicalise_host, spelling) == expected, why


@pytest.mark.parametrize("spelling", ["*.example.com", "*", "api.*.example.com"])
def test_a_request_host_is_never_a_wildcard(spelling: str) -> None:
    """A wildcard is an allowlist form only; a request cannot ask for one."""
    with pytest.raises(HostRejected) as caught:
        canonicalise_host(spelling)
    assert caught.value.reason == "wildcard"


def test_homograph_rejections_say_why() -> None:
    """Punycode and non-ASCII rejections name homograph attacks, as the issue demands."""
    for spelling in ("xn--80ak6aa92e.com", "\u0430pple.com"):
        with pytest.raises(HostRejected, match="homograph"):
            canonicalise_pattern(spelling)


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("example.com", ["example.com"], "example.com"),
        ("api.example.com", ["*.example.com"], "*.example.com"),
        ("a.b.c.example.com", ["*.example.com"], "*.example.com"),
        ("example.com", ["*.example.com"], None),
        ("badexample.com", ["*.example.com"], None),
        ("example.com.evil.com", ["example.com", "*.example.com"], None),
        ("api.example.com", ["example.com"], None),
        ("other.org", [], None),
        ("api.example.com", ["*.example.com", "api.example.com"], "api.example.com"),
        ("x.api.example.com", ["*.example.com", "*.api.example.com"], "*.api.example.com"),
        ("x.api.example.com", ["*.api.example.com", "*.example.com"], "*.api.example.com"),
    ],
)
def test_match_host(host: str, patterns: list[str], expected: str | None) -> None:
    """Wildcards match strict subdomains only; exact and longer patterns win regardless of order."""
    assert match_host(host, patterns) == expected


def test_match_host_fails_closed_on_non_canonical_input() -> None:
    """A host that was not canonicalised does not match (callers canonicalise first)."""
    assert match_host("EXAMPLE.com", ["example.com"]) is None
    assert match_host("example.com.", ["example.com"]) is None


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.googleapis.com", "googleapis.com"),
        ("*.github.io", "github.io"),
        ("*.s3.amazonaws.com", "s3.amazonaws.com"),
        ("*.api.github.io", None),  # one tenant's subdomains: a registrable domain
        ("*.example.com", None),
        ("googleapis.com", None),  # an exact host is no wildcard
        ("storage.googleapis.com", None),
    ],
)
def test_shared_suffix_names_only_wildcards_over_private_section_suffixes(
    pattern: str, expected: str | None
) -> None:
    """Only a wildcard directly over a private-section suffix is named as shared."""
    assert shared_suffix(pattern) == expected


def test_public_suffixes_come_from_the_bundled_list_without_any_network(monkeypatch) -> None:
    """With every socket refused, a fresh extractor still decides public suffixes (bundled)."""
    import socket  # noqa: PLC0415 - only this test needs it

    from perstack_sandbox_proxy import hosts  # noqa: PLC0415

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the public suffix list must never be fetched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    hosts._bundled_extractor.cache_clear()
    try:
        with pytest.raises(HostRejected) as caught:
            canonicalise_pattern("*.co.uk")
        assert caught.value.reason == "public-suffix-wildcard"
        assert canonicalise_pattern("*.example.co.uk") == "*.example.co.uk"
    finally:
        hosts._bundled_extractor.cache_clear()


def test_the_proxy_side_never_imports_tldextract() -> None:
    """Canonicalising and matching (all the proxy container does) work without tldextract."""
    import subprocess  # noqa: PLC0415 - only this test needs it
    import sys  # noqa: PLC0415

    code = (
        "import sys; from perstack_sandbox_proxy import hosts; "
        "h = hosts.canonicalise_host('API.example.com.'); "
        "assert hosts.match_host(h, [hosts.canonicalise_pattern('api.example.com')]) == h; "
        "assert 'tldextract' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
