"""The checks of one CONNECT request, in the order of docs/architecture.md, decision 3.

proxy/_session.py runs them in this order:

parse -> canonicalise -> allowlist (no DNS yet) -> resolve -> refuse any non-public answer ->
dial the checked address -> 200 -> read the ClientHello, refuse a missing or different SNI ->
forward the ClientHello -> splice.

The upstream is dialled before the ClientHello is read so that an unreachable upstream can
still be answered with 502/504. No byte reaches the upstream before the SNI has been
checked: a mismatch costs it a TCP handshake with an address that passed every check.
"""

from __future__ import annotations

import asyncio
import binascii
import errno
import functools
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ._connection import Connection
from ._http import Refusal, RequestHead, split_authority
from ._resolver import ImmediateAnswer, ResolveError, Resolver
from ._tls import TlsError, server_name
from .hosts import HostRejected, canonicalise_host, match_host

if TYPE_CHECKING:
    from ._audit import Decision
    from ._netrules import AddressRules, IPAddress
    from ._policy import Policy, SkillGrant

TLS_PORT: Final = 443
# What connect_ex returns while the handshake goes on (loop.sock_connect's BlockingIOError and
# InterruptedError): the socket becomes writable when it has ended, and SO_ERROR tells how.
_IN_PROGRESS: Final = frozenset(
    {errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}
)

Connector = Callable[[str, int], Awaitable[Connection]]
# The same, when it can connect without awaiting anything (see `Session._start_dial`).
ImmediateConnector = Callable[[str, int, asyncio.AbstractEventLoop], Connection]


async def open_upstream(address: str, port: int) -> Connection:
    """Start a TCP connection to ``address`` (an IP literal, never a name) and ``port``.

    The handshake may still be under way when this returns: the session waits for it with
    :meth:`Connection.when_connected`, straight from the loop's writability callback.

    Raises:
        OSError: the connection failed at once (no route, for instance).

    """
    return start_upstream(address, port, asyncio.get_running_loop())


def start_upstream(address: str, port: int, loop: asyncio.AbstractEventLoop) -> Connection:
    """Start the same connection as :func:`open_upstream`, without a coroutine.

    Raises:
        OSError: the connection failed at once (no route, for instance).

    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # Created non-blocking (one system call fewer than setblocking afterwards).
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        _start_connect(sock, address, port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Connection(sock, upstream=True, loop=loop)
    except BaseException:
        sock.close()
        raise


def _start_connect(sock: socket.socket, address: str, port: int) -> None:
    """Begin the handshake of the non-blocking ``sock`` (an IP literal: parsed, not looked up).

    Raises:
        OSError: the connection failed at once.

    """
    error = sock.connect_ex((address, port))
    if error and error not in _IN_PROGRESS:
        raise OSError(error, f"connect to {address} port {port}: {os.strerror(error)}")


@dataclass
class TunnelRequest:
    """What a CONNECT handler needs: the policy, collaborators, and the record to fill."""

    policy: Policy
    resolver: Resolver
    connector: Connector
    rules: AddressRules
    record: Decision
    # The skill whose credential the request presented (`identify_skill`), if any.
    grant: SkillGrant | None = None


def identify_skill(policy: Policy, head: RequestHead, record: Decision) -> SkillGrant | None:
    """Return the skill whose credential the request presents, and name it in the record.

    Called before any check that can refuse the request, so that every refusal of a request
    that carried a valid credential (plain HTTP, an IP literal, a port other than 443) is
    attributed to its skill in the audit. Every token is compared (see `Policy.grant_for`).
    """
    if not policy.skills:
        return None
    grant = policy.grant_for(_proxy_password(head))
    record.skill = grant.skill if grant is not None else None
    return grant


def check_target(request: TunnelRequest, head: RequestHead) -> str:
    """Canonicalise the CONNECT target and decide on it without any DNS query.

    Returns:
        The canonical host.

    Raises:
        Refusal: the authority is malformed, the host is invalid or not allowed, the port is
            not 443, or the Host header names another target.

    """
    record = request.record
    raw_host, port = split_authority(head.target)
    record.raw_host, record.port = raw_host, port
    host = _canonical(raw_host, "host-")
    record.host = host
    if port != TLS_PORT:
        raise Refusal(403, "port-not-allowed")
    record.rule = match_host(host, _allowed_domains(request))
    if record.rule is None:
        raise Refusal(403, "not-allowed")
    host_header = head.header("host")
    if host_header is not None and not _same_target(host_header, host, port):
        raise Refusal(403, "host-header-mismatch")
    return host


def _allowed_domains(request: TunnelRequest) -> tuple[str, ...]:
    """Return the list this client is held to: its skill's own, when the policy has skills.

    Raises:
        Refusal: 403 ``no-skill-credential`` when the policy has skills (or requires a grant)
            and the request carried no single, valid ``Proxy-Authorization: Basic`` with a
            token of the current grant.

    """
    policy = request.policy
    if not policy.skills and not policy.require_grant:
        return policy.allowed_domains
    if request.grant is None:
        raise Refusal(403, "no-skill-credential")
    return request.grant.allowed_domains


def _proxy_password(head: RequestHead) -> bytes:
    """Return the password of the one ``Proxy-Authorization: Basic`` header (b"" if none)."""
    values = [value for name, value in head.headers if name == "proxy-authorization"]
    if len(values) != 1:
        return b""
    scheme, _, encoded = values[0].partition(" ")
    if scheme.lower() != "basic":
        return b""
    try:
        decoded = binascii.a2b_base64(encoded.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return b""
    _, colon, password = decoded.partition(b":")
    return password if colon else b""


def _canonical(raw: str, prefix: str) -> str:
    canonical, reason = _canonical_or_reason(raw)
    if canonical is None:
        raise Refusal(403, prefix + reason)
    return canonical


@functools.lru_cache(maxsize=1024)
def _canonical_or_reason(raw: str) -> tuple[str | None, str]:
    """Canonicalise ``raw`` once (it is pure; a skill names the same few hosts again and again)."""
    try:
        return canonicalise_host(raw), ""
    except HostRejected as exc:
        return None, exc.reason


def _same_target(header: str, host: str, port: int) -> bool:
    name, colon, port_text = header.rpartition(":")
    if not colon:
        name, port_text = header, str(port)
    if name == host:  # already canonical (canonicalising is idempotent): skip the rules
        return port_text == str(port)
    try:
        return canonicalise_host(name) == host and port_text == str(port)
    except HostRejected:
        return False


@dataclass
class Dial:
    """The checked addresses not tried yet, and when the whole dial must have succeeded."""

    addresses: list[IPAddress]
    deadline: float  # in loop time


async def resolve_and_dial(request: TunnelRequest, host: str) -> tuple[Connection, Dial]:
    """Resolve ``host``, check every answer, then start dialling the first checked address.

    The resolve and the dial each have their own time limit: one timer, moved between them.
    The connection returned may still be completing its handshake (see ``Dial``).

    Raises:
        Refusal: 504 when either limit passes, else as resolve_checked and dial_next.

    """
    limits = request.policy.limits
    reason = "resolve-timeout"
    try:
        async with asyncio.timeout(limits.resolve_timeout) as deadline:
            addresses = await resolve_checked(request, host)
            reason = "connect-timeout"
            dial = Dial(addresses, asyncio.get_running_loop().time() + limits.connect_timeout)
            deadline.reschedule(dial.deadline)
            return await dial_next(request, dial), dial
    except TimeoutError as exc:  # the deadline's own: inner timeouts are mapped below
        raise Refusal(504, reason) from exc


async def redial(request: TunnelRequest, dial: Dial) -> Connection:
    """Start dialling the next address of ``dial`` (the last handshake failed).

    Raises:
        Refusal: 504 once the dial's deadline has passed, 502 when no address is left.

    """
    try:
        async with asyncio.timeout_at(dial.deadline):
            return await dial_next(request, dial)
    except TimeoutError as exc:
        raise Refusal(504, "connect-timeout") from exc


async def resolve_checked(request: TunnelRequest, host: str) -> list[IPAddress]:
    """Resolve ``host`` and refuse unless every answer may be dialled (the caller bounds time).

    Raises:
        Refusal: 504 when the resolver times out, 502 on no answer, 403 on any refused address.

    """
    try:
        answers = await request.resolver.resolve(host)
    except TimeoutError as exc:
        raise Refusal(504, "resolve-timeout") from exc
    except ResolveError as exc:
        raise Refusal(502, "resolve-failed") from exc
    return check_answers(request, answers)


def immediate_answers(answer_now: ImmediateAnswer, host: str) -> list[str] | None:
    """Return the resolver's answers for ``host`` if it has them at once, else None.

    Raises:
        Refusal: 502 when the resolver knows at once that the name has no address.

    """
    try:
        return answer_now(host)
    except ResolveError as exc:
        raise Refusal(502, "resolve-failed") from exc


def check_answers(request: TunnelRequest, answers: list[str]) -> list[IPAddress]:
    """Record the resolver's ``answers`` and refuse unless every one of them may be dialled.

    Raises:
        Refusal: 502 on no answer, 403 on any refused address.

    """
    request.record.resolved = answers[:16]
    if not answers:
        raise Refusal(502, "resolve-failed")
    checked: list[IPAddress] = []
    for answer in answers:
        address, reason = request.rules.verdict(answer)
        if address is None or reason is not None:
            raise Refusal(403, reason or "bad-answer")  # one bad answer taints the name
        checked.append(address)
    return checked


async def dial_next(request: TunnelRequest, dial: Dial) -> Connection:
    """Start a connection to the next address of ``dial`` that takes one (the caller bounds time).

    Raises:
        Refusal: 502 when every address refused.

    """
    while dial.addresses:
        address = dial.addresses.pop(0)
        text = request.record.dialled = str(address)
        try:
            return await request.connector(text, TLS_PORT)
        except OSError:
            continue
    raise Refusal(502, "connect-failed")


def dial_now(
    request: TunnelRequest, dial: Dial, connect: ImmediateConnector, loop: asyncio.AbstractEventLoop
) -> Connection:
    """Start dialling as :func:`dial_next` does, with a connector that needs no awaiting.

    Raises:
        Refusal: 504 once the dial's deadline has passed, 502 when every address refused.

    """
    if loop.time() >= dial.deadline:
        raise Refusal(504, "connect-timeout")
    while dial.addresses:
        address = dial.addresses.pop(0)
        text = request.record.dialled = str(address)  # ipaddress formats in Python: once
        try:
            return connect(text, TLS_PORT, loop)
        except OSError:
            continue
    raise Refusal(502, "connect-failed")


def check_hello(body: bytes, host: str) -> None:
    """Check the server name of the ClientHello ``body`` against the CONNECT ``host``.

    Raises:
        Refusal: (status None: the 200 has been sent) the hello is malformed, carries no SNI,
            or names another host.

    """
    try:
        name = server_name(body)
    except TlsError as exc:
        raise Refusal(None, exc.reason) from exc
    if name is None:
        raise Refusal(None, "sni-missing")
    if name == host:  # already canonical (canonicalising is idempotent): skip the rules
        return
    try:
        canonical = canonicalise_host(name)
    except HostRejected as exc:
        raise Refusal(None, "sni-" + exc.reason) from exc
    if canonical != host:
        raise Refusal(None, "sni-mismatch")
