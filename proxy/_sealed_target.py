"""Which requests a sealed tunnel forwards: the target named by Host and by the request line.

A terminated tunnel substitutes real values only towards its CONNECT host. The Host header
must name it, and so must the request target: an upstream (or a proxy in front of it) may
route by an absolute-form target rather than by Host. So a target is kept only in origin form
(``/path?query``, or ``*`` for OPTIONS), an absolute form naming the tunnel's own host is
rewritten to origin form, and anything else is refused before any substitution
(docs/architecture.md, decision 70).
"""

from __future__ import annotations

from ._http import Refusal
from .hosts import HostRejected, canonicalise_host


def in_origin_form(head: bytes, method: str, host: str) -> bytes:
    """Return ``head`` with its request target in origin form (decision 70).

    Raises:
        Refusal: a target neither in origin form nor absolute form naming this tunnel's host.

    """
    line, crlf, rest = head.partition(b"\r\n")
    verb, target, version = line.split(b" ", 2)  # _parse has checked the request line
    if b"#" in target:
        raise Refusal(400, "sealed-bad-target")
    if _origin(target) or (target == b"*" and method == "OPTIONS"):
        return head
    scheme, sep, remainder = target.partition(b"://")
    if not sep or scheme.lower() != b"https":
        raise Refusal(400, "sealed-bad-target")
    # The authority ends at the path or the query (RFC 9112, section 3.2.2).
    ends = [at for at in (remainder.find(b"/"), remainder.find(b"?")) if at >= 0]
    cut = min(ends, default=len(remainder))
    authority, path = remainder[:cut], remainder[cut:]
    if b"@" in authority or not is_target(authority.decode("latin-1"), host):
        raise Refusal(421, "sealed-target-mismatch")
    origin = path if path.startswith(b"/") else b"/" + path
    if not _origin(origin):
        raise Refusal(400, "sealed-bad-target")
    return b" ".join((verb, origin, version)) + crlf + rest


def _origin(target: bytes) -> bool:
    """Tell whether ``target`` is origin form, and not one a server may read as `//host`."""
    return target.startswith(b"/") and not target.startswith((b"//", b"/\\"))


def is_target(header: str, host: str) -> bool:
    """Tell whether a Host header or an authority names ``host`` on port 443."""
    name, colon, port = header.rpartition(":")
    if not colon or port.startswith("]") or "]" in port:
        name, port = header, "443"
    try:
        return canonicalise_host(name.strip()) == host and port.strip() == "443"
    except HostRejected:
        return False
