"""Attack probes that run INSIDE the sandbox (standard library only), imported by snippets.

The hostile skill runs snippets with `/expert` as working directory, so `import probes` works.
Every probe returns a short, stable outcome string (an errno name, an HTTP status and the
proxy's reason, ...) so that a test can expect one precise value.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
import ssl
import struct
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable

TIMEOUT_S = 5.0  # a refused or unroutable connect answers in microseconds; this bounds a hang


def outcome_of(exc: BaseException) -> str:
    """Name an exception by its errno (ENETUNREACH, EACCES, ...) or its class."""
    if isinstance(exc, socket.gaierror):
        names = {
            socket.EAI_NONAME: "EAI_NONAME",
            socket.EAI_AGAIN: "EAI_AGAIN",
            socket.EAI_FAIL: "EAI_FAIL",
        }
        return names.get(exc.errno or 0, f"EAI_{exc.errno}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    number = getattr(exc, "errno", None)
    if isinstance(number, int):
        return errno.errorcode.get(number, str(number))
    return type(exc).__name__


def tcp_connect(host: str, port: int) -> str:
    """Connect by TCP straight to `host` (an address), ignoring every proxy variable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect((host, port))
        except OSError as exc:
            return outcome_of(exc)
    return "connected"


def udp_send(host: str, port: int, payload: bytes = b"x") -> str:
    """Send one UDP datagram straight to `host`; return 'sent' or the errno name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.sendto(payload, (host, port))
        except OSError as exc:
            return outcome_of(exc)
    return "sent"


def udp_exchange(host: str, port: int, payload: bytes = b"x") -> str:
    """Send a datagram on a connected UDP socket and wait for an answer or an error.

    An unreachable next hop is reported on the socket (EHOSTUNREACH) once neighbour
    discovery gives up; 'timeout' means the datagram went somewhere that never answered.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.connect((host, port))
            sock.send(payload)
            sock.recv(512)
            sock.send(payload)
        except OSError as exc:
            return outcome_of(exc)
    return "answered"


def default_gateway() -> str:
    """Return the sandbox's default gateway from the routing table ('' when there is none)."""
    with open("/proc/net/route", encoding="ascii") as table:  # noqa: PTH123
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    return ""


def in_parallel(calls: dict[str, tuple[Callable[..., str], *tuple[object, ...]]]) -> dict[str, str]:
    """Run probes concurrently: {label: (function, *args)} -> {label: outcome}.

    Unreachable next hops take seconds each to be reported; together they take that once.
    """
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = {label: pool.submit(call[0], *call[1:]) for label, call in calls.items()}
        return {label: future.result() for label, future in futures.items()}


def resolve(name: str) -> str:
    """Resolve `name` with the system resolver; return the addresses or the EAI_* name."""
    try:
        answers = socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return outcome_of(exc)
    return "resolved:" + ",".join(sorted({str(a[4][0]) for a in answers}))


def dns_query(server: str, name: str, *, tcp: bool = False) -> str:
    """Send a raw DNS A query for `name` to `server`:53 (UDP or TCP); return what happened."""
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    message = struct.pack(">HHHHHH", 0x5053, 0x0100, 1, 0, 0, 0) + question + b"\0\1\0\1"
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            if tcp:
                sock.connect((server, 53))
                sock.sendall(struct.pack(">H", len(message)) + message)
                reply = sock.recv(4096)[2:]
            else:
                sock.sendto(message, (server, 53))
                reply = sock.recv(4096)
        except OSError as exc:
            return outcome_of(exc)
    answers = struct.unpack(">H", reply[6:8])[0] if len(reply) >= 8 else 0
    return f"answered:rcode={reply[3] & 0xF if len(reply) > 3 else -1}:answers={answers}"


def proxy_address() -> tuple[str, int]:
    """Return the proxy's address from HTTPS_PROXY (the sandbox's only way out)."""
    url = urlsplit(os.environ["HTTPS_PROXY"])
    if not url.hostname or not url.port:
        raise ValueError("HTTPS_PROXY names no host and port")
    return url.hostname, url.port


def with_credential(head: bytes) -> bytes:
    """Add this skill's proxy credential (from HTTPS_PROXY, as clients do) after the first line."""
    url = urlsplit(os.environ["HTTPS_PROXY"])
    if url.password is None:
        return head
    basic = base64.b64encode(f"{unquote(url.username or '')}:{unquote(url.password)}".encode())
    first, crlf, rest = head.partition(b"\r\n")
    return first + crlf + b"Proxy-Authorization: Basic " + basic + b"\r\n" + rest


def proxy_exchange(head: bytes, after: bytes = b"", *, credential: bool = True) -> str:
    """Send a raw request head to the proxy; return 'STATUS reason' of its answer.

    The head carries this skill's credential unless `credential` is false. The reason is the
    proxy's `X-Proxy-Reason` header; 'closed' means no answer at all.
    """
    with socket.create_connection(proxy_address(), timeout=TIMEOUT_S) as sock:
        sock.sendall((with_credential(head) if credential else head) + after)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            return outcome_of(exc)
    return status_and_reason(data)


def status_and_reason(data: bytes) -> str:
    """Render a proxy answer head as 'STATUS reason' ('closed' for nothing)."""
    if not data:
        return "closed"
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "?"
    reason = next(
        (ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("x-proxy-")),
        "",
    )
    return f"{status} {reason}".strip()


def connect_via_proxy(
    authority: str, *, host_header: str | None = None, credential: bool = True
) -> str:
    """CONNECT to `authority` through the proxy (with this skill's credential); 'STATUS reason'."""
    host = authority if host_header is None else host_header
    head = (
        f"CONNECT {authority} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )  # UTF-8, as clients send it
    return proxy_exchange(head, credential=credential)


def tls_through_tunnel(authority: str, server_name: str | None) -> str:
    """CONNECT to `authority`, then start TLS with `server_name` as SNI; return the outcome.

    'tls-ok' means the handshake completed (the tunnel carried TLS for that name);
    otherwise 'STATUS reason' of a refused CONNECT, or the TLS error class.
    """
    sock = socket.create_connection(proxy_address(), timeout=TIMEOUT_S)
    try:
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
        sock.sendall(with_credential(head))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                return "closed"
            head += chunk
        answer = status_and_reason(head)
        if not answer.startswith("200"):
            return answer
        context = ssl.create_default_context()
        context.check_hostname = False  # the point is what the PROXY lets through
        context.verify_mode = ssl.CERT_NONE
        try:
            with context.wrap_socket(sock, server_hostname=server_name) as tls:
                tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            return "tls-failed:" + type(exc).__name__
        return "tls-ok"
    finally:
        sock.close()


def https_get(url: str) -> str:
    """GET `url` the way ordinary code does (urllib honours HTTPS_PROXY); return the status."""
    request = urllib.request.Request(url, headers={"User-Agent": "perstack-security-suite"})  # noqa: S310 - https only
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S * 4) as response:  # noqa: S310
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return outcome_of(reason) if isinstance(reason, BaseException) else str(reason)


def open_outcome(path: str, mode: str = "rb") -> str:
    """Open `path` (and read a byte when reading); return 'ok' or the errno name."""
    try:
        with open(path, mode) as handle:  # noqa: PTH123 - the errno is the point
            if "r" in mode:
                handle.read(1)
    except OSError as exc:
        return outcome_of(exc)
    return "ok"


def emit(value: object) -> None:
    """Print the probe's result as one JSON document (what the test parses)."""
    print(json.dumps(value))  # noqa: T201 - stdout is the channel back to the test
