"""The listening side: accept, enforce the connection cap, hand each connection to a session.

Each connection carries exactly one request. After a refusal, a health answer or the end of a
tunnel the connection is closed, so no second request (and no Host-header game on a
kept-alive connection) is ever interpreted.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import struct
from typing import TYPE_CHECKING, Final

from ._fairness import UNAUTHENTICATED_EVICTED, Shares
from ._http import Refusal
from ._idle import IdleWatch
from ._netrules import AddressRules, parse_address
from ._poller import Poller
from ._seal import SealState
from ._session import Session
from ._tunnel import Connector, ImmediateConnector, open_upstream, start_upstream

if TYPE_CHECKING:
    from ._audit import AuditLog
    from ._connection import Connection
    from ._policy import Policy
    from ._resolver import ImmediateAnswer, Resolver

BACKLOG: Final = 1024
# Connections accepted per readiness callback of a listening socket.
ACCEPT_BATCH: Final = 64
# TCP_INFO of a listening socket: tcpi_unacked (offset 24) holds its accept queue's length.
_TCP_INFO_SIZE: Final = 32
_QUEUE_LENGTH: Final = struct.Struct("=I")
_QUEUE_OFFSET: Final = 24
# Out of file descriptors (or memory): stop accepting for this long, as asyncio does.
ACCEPT_RETRY_DELAY: Final = 1.0
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Local addresses whose address rules are kept (one per interface a wildcard listen serves).
_RULES_CACHE_SIZE: Final = 64


class ProxyServer:
    """An allowlist-enforcing CONNECT proxy bound to one or more listening addresses."""

    def __init__(
        self,
        policy: Policy,
        resolver: Resolver,
        audit: AuditLog,
        connector: Connector | None = None,
        connect_now: ImmediateConnector | None = None,
    ) -> None:
        """Hold the collaborators; nothing listens until :meth:`start`.

        ``connector`` defaults to a real TCP dial (and ``connect_now`` to its immediate form);
        a resolver with an ``answer_now`` method and a ``connect_now`` let a session resolve
        and dial without a task (docs/architecture.md, decision 46).
        """
        self.policy = policy
        self.resolver = resolver
        self.audit = audit
        if connector is None:
            connector, connect_now = open_upstream, start_upstream
        self.connector = connector
        self.connect_now = connect_now
        self.answer_now: ImmediateAnswer | None = getattr(resolver, "answer_now", None)
        # Empty until the orchestrator seals the run over the control channel (proxy/_control.py).
        self.seal = SealState()
        self.active = 0
        self.loop: asyncio.AbstractEventLoop  # set by start(), before any connection exists
        self.poller: Poller  # likewise: watches every tunnel socket (decision 61)
        self.idle: IdleWatch  # likewise: cuts idle tunnels (decision 62)
        self._ids = itertools.count(1)
        self._listeners: list[socket.socket] = []
        self._sessions: set[Session] = set()
        self._rules = policy.addresses
        self._rules_by_local: dict[str, AddressRules] = {}
        # Listeners bound to one address: every socket they accept has it as its own.
        self._rules_by_listener: dict[int, AddressRules] = {}
        self.shares: Shares[Session] = Shares(policy.limits, len(policy.skills))

    async def start(self, listen: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Listen on every ``(host, port)``; return the bound addresses (port 0 picks one).

        Raises:
            OSError: an address cannot be bound.

        """
        loop = self.loop = asyncio.get_running_loop()
        self.poller = Poller(loop)
        self.idle = IdleWatch(loop, self.policy.limits.idle_timeout)
        self.audit.flush_once_per_iteration(loop)
        bound: list[tuple[str, int]] = []
        for host, port in listen:
            for sock in await _listening_sockets(host, port):
                self._listeners.append(sock)
                loop.add_reader(sock.fileno(), self._accept, sock)
                bound.append(sock.getsockname()[:2])
        own = [parse_address(host) for host, _ in bound]
        self._rules = self._rules.with_own(a for a in own if a is not None and not a.is_unspecified)
        for sock, address in zip(self._listeners[-len(bound) :], own, strict=True):
            if address is not None and not address.is_unspecified:
                self._rules_by_listener[sock.fileno()] = self._rules
        return bound

    async def close(self) -> None:
        """Stop listening and end every connection (tunnels included), then return."""
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        sessions = list(self._sessions)
        tasks = [session.task for session in sessions if session.task is not None]
        for session in sessions:
            session.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hasattr(self, "poller"):  # not when start() failed before making it
            self.poller.close()
            self.idle.close()
        self.audit.flush()

    def rules_for(self, client: Connection) -> AddressRules:
        """Add the address this client reached us on: with a wildcard listen it is ours too."""
        local = client.sock.getsockname()[0]
        rules = self._rules_by_local.get(local)
        if rules is None:
            address = parse_address(str(local))
            rules = self._rules.with_own([address] if address is not None else [])
            if len(self._rules_by_local) < _RULES_CACHE_SIZE:
                self._rules_by_local[local] = rules
        return rules

    def ended(self, session: Session) -> None:
        """Release the connection slot of ``session``."""
        if session in self._sessions:
            self._sessions.discard(session)
            self.active -= 1
            self.shares.released(session)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_queued(listener)):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(listener)
                    return
                continue  # e.g. the client gave up before we accepted
            self._open(sock, peer, self._rules_by_listener.get(listener.fileno()))

    def _open(self, sock: socket.socket, peer: object, rules: AddressRules | None) -> None:
        try:  # TCP_NODELAY comes from the listening socket (Linux copies it to accepted ones)
            sock.setblocking(False)  # noqa: FBT003 - the socket API takes a positional flag
        except OSError:
            sock.close()
            return
        session = Session(self, next(self._ids), sock, peer, rules)
        self._sessions.add(session)
        self.active += 1
        if self.active > self.policy.limits.max_connections:
            session.start(refusal=Refusal(503, "too-many-connections"))
            return
        evicted = self.shares.opened(session)
        if evicted is not None:
            evicted.refuse(Refusal(503, UNAUTHENTICATED_EVICTED))
        session.start()

    def _pause_accepting(self, listener: socket.socket) -> None:
        loop = self.loop
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if listener in self._listeners:
                loop.add_reader(listener.fileno(), self._accept, listener)

        loop.call_later(ACCEPT_RETRY_DELAY, resume)


def _queued(listener: socket.socket) -> int:
    """Return how many connections to accept now: those queued, at least 1, at most a batch.

    Accepting until the queue answers EAGAIN costs a failed accept (a system call and an
    exception) per readiness callback, that is per tunnel when clients come one at a time;
    the kernel reports the queue's length for the price of one getsockopt (decision 62).
    Where it does not, every accept that finds nothing just ends the batch, as before.
    """
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):  # no TCP_INFO here: accept until EAGAIN
        return ACCEPT_BATCH
    if len(info) < _QUEUE_OFFSET + _QUEUE_LENGTH.size:
        return ACCEPT_BATCH
    queued: int = _QUEUE_LENGTH.unpack_from(info, _QUEUE_OFFSET)[0]
    return max(1, min(ACCEPT_BATCH, queued))


async def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bind and listen on every address ``host`` names, as asyncio's create_server does.

    Raises:
        OSError: an address cannot be bound.

    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Inherited by every accepted socket: one system call per listener, not per client.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc}"
                ) from None
            sock.listen(BACKLOG)
            sock.setblocking(False)  # noqa: FBT003 - the socket API takes a positional flag
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
