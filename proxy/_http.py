"""The sliver of HTTP/1.1 the proxy speaks: reading one request head, and short responses.

Parsing is strict: CRLF line ends only, no obs-fold, no control bytes, one Host header.
Anything else is a 400; the proxy closes the connection after any refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSIONS: Final = frozenset({"HTTP/1.1", "HTTP/1.0"})
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_PORT: Final = 65535

REASON_PHRASES: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Refusal(Exception):  # noqa: N818 - a refusal is an outcome, not an error of ours
    """The proxy refuses the request: ``status`` to answer (None once tunnelling), ``reason``."""

    def __init__(self, status: int | None, reason: str) -> None:
        """Record the HTTP status (None when no response can be sent) and the reason code."""
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RequestHead:
    """A parsed request line and header fields (names lower-cased)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """Return the single value of header ``name`` (lower-case), or None when absent."""
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None


def request_line(head: bytes) -> str:
    """Return the first line of ``head`` as text, for the audit log of a malformed request."""
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def parse_head(head: bytes) -> RequestHead:
    """Parse a request head that ends with CRLFCRLF.

    Raises:
        Refusal: 400 with reason ``malformed-request`` for anything not strictly HTTP/1.x.

    """
    text = head[:-4].decode("latin-1")
    lines = text.split("\r\n")
    if any(_CONTROL.search(line) for line in lines):
        raise Refusal(400, "malformed-request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in _VERSIONS:  # noqa: PLR2004
        raise Refusal(400, "malformed-request")
    if not parts[1] or "\t" in parts[1]:
        raise Refusal(400, "malformed-request")
    headers = tuple(_header(line) for line in lines[1:])
    if sum(1 for name, _ in headers if name == "host") > 1:
        raise Refusal(400, "malformed-request")
    return RequestHead(parts[0], parts[1], parts[2], headers)


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.fullmatch(name):  # also rejects obs-fold (leading whitespace)
        raise Refusal(400, "malformed-request")
    return name.lower(), value.strip(" \t")


def split_authority(authority: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into the raw host and the port number.

    Raises:
        Refusal: 400 ``malformed-authority`` when there is no valid port.

    """
    host, colon, port = authority.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit() or len(port) > 5:  # noqa: PLR2004
        raise Refusal(400, "malformed-authority")
    number = int(port)
    if not 0 < number <= _MAX_PORT or port.startswith("0"):  # one spelling per port
        raise Refusal(400, "malformed-authority")
    return host, number


def response(status: int, reason: str) -> bytes:
    """Build a short, connection-closing response whose body names the refusal class."""
    body = f"{reason}\n".encode("ascii")
    return (
        f"HTTP/1.1 {status} {REASON_PHRASES.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Proxy-Reason: {reason}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + body


CONNECT_ESTABLISHED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"
