"""Host rules shared by config validation and the proxy (docs/architecture.md, decisions 4 and 5).

One spelling of a host is used for the allowlist decision, the audit log and the dial, so the
same function canonicalises allowlist entries in perstack.toml and hosts in live requests.

The accepted syntax is deliberately narrower than DNS:

- Letters, digits and `-` only (LDH), lowercased; labels 1-63 characters, not starting or
  ending with `-`; at most 253 characters; ONE trailing dot is trimmed.
- `_` is rejected. Hostnames are LDH by RFC 952/1123, and `_` only appears in service labels
  (`_dmarc`, `_sip._tcp`) that are never the target of an HTTP request. Browsers and resolvers
  differ on whether they accept it, and a character that parsers disagree on is exactly what a
  filter bypass is made of.
- Non-ASCII and punycode (`xn--`) are rejected: an internationalised name can be spelled with
  look-alike characters (a Cyrillic `a`, U+0430, in `apple.com`), so a reviewer reading the
  allowlist could not tell what it permits (homograph attacks). Every other `??--` label is a
  reserved IDNA form and is rejected too.
- IP literals are rejected in every notation (dotted, integer, hex, octal, short, IPv6, zone
  ids): the allowlist names hosts, and the proxy refuses non-public addresses after resolving.
  As in WHATWG URL parsing and `inet_aton`, a name whose last label is a number (`1.2.3.4`,
  `2130706433`, `127.1`) or hex-like (`0x7f`, `0x7f.1`) IS an IP literal.
- Single-label names (`localhost`, `metadata`) are rejected: a public host has a dot, and
  single labels are what search domains and cloud metadata services answer.

Wildcards (`canonicalise_pattern` only): a leading `*.` matches strict subdomains at any depth,
never the base itself. `*`, middle or trailing wildcards, and a wildcard directly over an ICANN
public suffix (`*.com`, `*.co.uk`) are refused: they admit whole registries. A wildcard over a
suffix of the list's PRIVATE section (`*.googleapis.com`, `*.github.io`) is accepted, because
real services are only reachable that way, but `shared_suffix` names it so that config
validation warns (every tenant of that suffix is reachable) and the plan marks it. Public
suffixes come from tldextract's BUNDLED snapshot; it is imported lazily, never fetched, so the
proxy container needs neither it nor DNS.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|://")
_PORT = re.compile(r"[^:]*:[0-9]*")
_HOST_CHARS = re.compile(r"[a-z0-9.-]+")
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class HostRejected(ValueError):  # noqa: N818 - the shared interface name, agreed with the proxy
    """A host or allowlist entry broke a host rule; `reason` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        """Keep the machine-readable `reason` and the human `message` naming the rule."""
        super().__init__(message)
        self.reason = reason
        self.message = message


def canonicalise_host(raw: str) -> str:
    """Return the one canonical spelling of a request host or exact allowlist entry.

    Raises:
        HostRejected: the host breaks a rule of the module docstring.

    """
    return _canonicalise(raw, allow_single_label=False)


def canonicalise_pattern(raw: str) -> str:
    """Return the canonical allowlist entry: an exact host, or `*.` followed by a host.

    Raises:
        HostRejected: the entry breaks a host rule or a wildcard rule.

    """
    if not raw.startswith("*."):
        if "*" in raw:
            raise HostRejected(
                "wildcard",
                f"wildcard in {raw!r}: only a leading '*.' is allowed (e.g. '*.example.com')",
            )
        return canonicalise_host(raw)
    base = raw[2:]
    if "*" in base:
        raise HostRejected(
            "wildcard", f"wildcard in {raw!r}: only ONE leading '*.' is allowed, nowhere else"
        )
    canonical = _canonicalise(base, allow_single_label=True)
    if _suffix_section(canonical) == "icann":
        raise HostRejected(
            "public-suffix-wildcard",
            f"wildcard {raw!r} covers the public suffix {canonical!r}, i.e. every site "
            "registered under it; name the registrable domain (e.g. '*.example.com')",
        )
    if "." not in canonical:
        raise _single_label(canonical)
    return f"*.{canonical}"


def shared_suffix(pattern: str) -> str | None:
    """Return the suffix a canonical wildcard covers when it is a private-section public suffix.

    `*.googleapis.com` gives `googleapis.com`: anyone can register a site under that suffix, so
    the wildcard admits every tenant's host, not only the service meant. Any other pattern
    (exact hosts, `*.example.com`) gives None.
    """
    base = pattern.removeprefix("*.")
    if base == pattern or _suffix_section(base) != "private":
        return None
    return base


def match_host(host: str, patterns: Iterable[str]) -> str | None:
    """Return the pattern that admits `host`, or None; both must already be canonical.

    An exact entry wins over a wildcard, and a longer wildcard over a shorter one, so the
    answer (which the audit log records) does not depend on the order of `patterns`.
    Non-canonical input simply fails to match (fail closed).
    """
    best: str | None = None
    for pattern in patterns:
        if pattern == host:
            return pattern
        if (
            pattern.startswith("*.")
            and host.endswith(pattern[1:])
            and (best is None or len(pattern) > len(best))
        ):
            best = pattern
    return best


def _canonicalise(raw: str, *, allow_single_label: bool) -> str:
    _check_characters(raw)
    host = raw.lower().removesuffix(".")
    if not host:
        raise HostRejected("empty", "host is empty")
    if len(host) > MAX_HOST_LENGTH:
        raise HostRejected(
            "too-long", f"host is {len(host)} characters; at most {MAX_HOST_LENGTH} are allowed"
        )
    labels = host.split(".")
    if _NUMBER_LABEL.fullmatch(labels[-1]):
        raise HostRejected(
            "ip-literal",
            f"{raw!r} is an IP address literal (its last label is a number, as URL parsers and "
            "inet_aton read it); name a host, addresses are never allowlisted",
        )
    for label in labels:
        _check_label(label, raw)
    if len(labels) == 1 and not allow_single_label:
        raise _single_label(host)
    return host


def _check_characters(raw: str) -> None:
    if not raw:
        raise HostRejected("empty", "host is empty")
    if not raw.isascii():
        raise HostRejected(
            "non-ascii",
            f"{raw!r} contains non-ASCII characters; internationalised names are rejected "
            "because look-alike letters can impersonate another host (homograph attacks)",
        )
    if _SCHEME.search(raw):
        raise HostRejected("scheme", f"{raw!r} has a URL scheme; write the bare host name")
    if raw.startswith("[") or raw.count(":") > 1:
        raise HostRejected(
            "ip-literal", f"{raw!r} is an IPv6 address literal; addresses are never allowlisted"
        )
    if _PORT.fullmatch(raw):
        raise HostRejected(
            "port", f"{raw!r} has a port; write the bare host (CONNECT is allowed to 443 only)"
        )
    if "*" in raw:
        raise HostRejected("wildcard", f"{raw!r}: a wildcard is not a host")
    if not _HOST_CHARS.fullmatch(raw.lower()):
        bad = sorted({c for c in raw.lower() if not _HOST_CHARS.fullmatch(c)})
        raise HostRejected(
            "bad-character",
            f"{raw!r} contains {', '.join(repr(c) for c in bad)}; a host name holds only "
            "letters, digits, '-' and '.' (LDH; '_' is not a host character)",
        )


def _check_label(label: str, raw: str) -> None:
    if not label:
        raise HostRejected("empty-label", f"{raw!r} has an empty label ('..' or a leading '.')")
    if len(label) > MAX_LABEL_LENGTH:
        raise HostRejected(
            "label-too-long",
            f"label {label[:20]!r}... is {len(label)} characters; at most {MAX_LABEL_LENGTH}",
        )
    if label.startswith("xn--"):
        raise HostRejected(
            "punycode",
            f"punycode label {label!r} is rejected: IDNA names can spell look-alike hosts "
            "(homograph attacks); only plain ASCII host names are allowed",
        )
    if label[2:4] == "--":
        raise HostRejected(
            "reserved-label",
            f"label {label!r} has '--' in positions 3-4, a form reserved for IDNA encodings",
        )
    if label.startswith("-") or label.endswith("-"):
        raise HostRejected(
            "bad-character", f"label {label!r} starts or ends with '-', which LDH forbids"
        )


def _single_label(host: str) -> HostRejected:
    return HostRejected(
        "single-label",
        f"{host!r} is a single-label name; a public host has a dot (single labels are "
        "answered by search domains and metadata services)",
    )


def _suffix_section(host: str) -> str | None:
    """Return "icann" or "private" when `host` is itself a public suffix, else None."""
    extract = _bundled_extractor()
    result = extract(host, include_psl_private_domains=True)
    if result.domain or result.suffix != host:
        return None
    return "private" if result.is_private else "icann"


@functools.cache
def _bundled_extractor() -> Any:  # noqa: ANN401 - tldextract ships no type information we use
    # Imported here so the proxy container (which only canonicalises and matches) does not
    # need tldextract; no URLs and no cache dir: the bundled snapshot, never the network.
    import tldextract  # noqa: PLC0415

    return tldextract.TLDExtract(
        suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True
    )
