"""One client connection, from accept to its close line, as a chain of loop callbacks.

The steps, in the order of docs/architecture.md, decision 3: read the request head (bounded
in size and time) -> parse, canonicalise and decide without DNS -> count it against its
skill's share (decision 40; until its head arrives it sits in the evictable unauthenticated
pool) -> resolve and dial the checked address (the only step run as a task: the resolver and
connector are coroutines) -> 200 -> read the ClientHello (bounded in size and time) and check
its SNI -> forward it, write the decision line -> splice. Every refusal answers (when an
answer can still be sent), writes one decision line and closes; every decided connection gets
one close line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit

from ._audit import Decision
from ._connection import Connection, TunnelStats, splice
from ._http import (
    CONNECT_ESTABLISHED,
    Refusal,
    RequestHead,
    parse_head,
    request_line,
    response,
)
from ._sealed import SealedTunnel, relay
from ._tls import TlsError, client_hello_body
from ._tunnel import (
    Dial,
    TunnelRequest,
    check_answers,
    check_hello,
    check_target,
    dial_now,
    identify_skill,
    immediate_answers,
    redial,
    resolve_and_dial,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from ._audit import AuditLog
    from ._fairness import Shares
    from ._idle import IdleWatch
    from ._netrules import AddressRules
    from ._policy import Policy
    from ._poller import Poller
    from ._resolver import ImmediateAnswer, Resolver
    from ._seal import SealState
    from ._tunnel import Connector, ImmediateConnector

HEALTH_PATH: Final = "/healthz"
# A closing client gets this long to take our last bytes (a refusal) before it is cut off.
CLOSE_TIMEOUT: Final = 5.0


class SessionHost(Protocol):
    """What a session needs from the server that accepted it (`ProxyServer` is one)."""

    loop: asyncio.AbstractEventLoop
    poller: Poller
    idle: IdleWatch
    policy: Policy
    resolver: Resolver
    connector: Connector
    answer_now: ImmediateAnswer | None
    connect_now: ImmediateConnector | None
    audit: AuditLog
    shares: Shares[Session]
    seal: SealState

    def rules_for(self, client: Connection) -> AddressRules:
        """Return the address rules for a client (the server's own addresses included)."""

    def ended(self, session: Session) -> None:
        """Release the connection slot of `session`."""


class Session:
    """The state of one client connection; each method runs as one loop callback."""

    def __init__(
        self,
        server: SessionHost,
        conn: int,
        sock: socket.socket,
        peer: object,
        rules: AddressRules | None = None,
    ) -> None:
        """Take over the accepted, non-blocking ``sock``; nothing happens until :meth:`start`.

        ``rules`` are the address rules when the listener knows them (bound to one address);
        else the session asks the server, which looks up the socket's own address.
        """
        self.server = server
        self.conn = conn
        self.started = time.monotonic()
        self._loop = server.loop
        self.client = Connection(sock, loop=self._loop, poller=server.poller)
        self.record = Decision(client=_address_text(peer))
        self.stats = TunnelStats()
        self.upstream: Connection | None = None
        self.task: asyncio.Task[None] | None = None
        self._limits = server.policy.limits
        self._rules = rules
        self._data = b""
        self._timer: asyncio.TimerHandle | None = None
        self._host = ""
        self._request: TunnelRequest | None = None
        self._dial: Dial | None = None
        self._reading_for_step = False
        self._finished = False

    def start(self, refusal: Refusal | None = None) -> None:
        """Begin with the request head (already buffered, usually), or answer ``refusal``."""
        if refusal is not None:
            self._refuse(refusal)
        else:
            self._guard(self._read_head)

    def refuse(self, refusal: Refusal) -> None:
        """Refuse now, from outside (evicted from the unauthenticated pool); audited."""
        self._guard(partial(_raise, refusal))

    def stop(self) -> None:
        """End the connection now (the server is stopping); its close line is still written."""
        if self.task is not None:
            self.task.cancel()
        if self.upstream is not None:
            self.upstream.abort()
        self.client.abort()
        self._finish()

    def _guard(self, step: Callable[[], None]) -> None:
        """Run one step; map what it raises to the refusal the client and the audit get."""
        try:
            step()
        except Refusal as refusal:
            self._refuse(refusal)
        except OSError:  # the client went away mid-request (e.g. before our 200 reached it)
            self._refuse(Refusal(None, "client-gone"))
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the proxy
            sys.stderr.write(f"proxy: connection {self.conn} failed: {exc!r}\n")
            self._end()

    def _wait_readable(
        self, step: Callable[[], None], timeout: float, status: int | None, reason: str
    ) -> None:
        """Run ``step`` when the client sends more, or refuse once ``timeout`` has passed."""
        if self._timer is None:
            self._timer = self._loop.call_later(timeout, self._timed_out, status, reason)
        if not self._reading_for_step:
            self._reading_for_step = True
            self.client.read_with(partial(self._guard, step))

    def _timed_out(self, status: int | None, reason: str) -> None:
        """Refuse: a wait ran out (the refusal is made only now, not for every wait)."""
        self._refuse(Refusal(status, reason))

    def _stop_waiting(self) -> None:
        """Cancel the timer of the current wait; the socket stays watched (see ``_allow``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reading_for_step = False

    def _stop_reading(self) -> None:
        self._stop_waiting()
        self.client.pause_reading()

    # --- the request head ----------------------------------------------------------------

    def _read_head(self) -> None:
        limit = self._limits.max_header_bytes
        while (end := self._data.find(b"\r\n\r\n")) < 0:
            if len(self._data) >= limit:
                raise Refusal(431, "header-too-large")
            chunk = self.client.recv(limit + 4 - len(self._data))
            if chunk is None:
                timeout = self._limits.header_timeout
                self._wait_readable(self._read_head, timeout, 408, "header-timeout")
                return
            if not chunk:
                raise Refusal(400, "incomplete-request" if self._data else "no-request")
            self._data += chunk
        if end + 4 > limit:
            raise Refusal(431, "header-too-large")
        self._stop_waiting()
        if self.client.reading:  # the head came after a wait: the ClientHello step reads next
            self.client.park_reading()
        self.server.shares.heard(self)
        raw, self._data = self._data[: end + 4], self._data[end + 4 :]
        self._decide(raw)

    def _decide(self, raw: bytes) -> None:
        """Parse the head and decide on it without DNS; start the resolve-and-dial task."""
        record = self.record
        record.raw_host = request_line(raw)
        head = parse_head(raw)
        record.method, record.raw_host = head.method, head.target
        if head.method == "GET" and head.target == HEALTH_PATH:
            self.client.write(response(200, "ok"))
            self._end()
            return
        server = self.server
        grant = identify_skill(server.policy, head, record)  # before anything can refuse
        if head.method != "CONNECT":
            _refuse_plain_http(head, record)
        rules = self._rules or server.rules_for(self.client)
        request = TunnelRequest(
            server.policy, server.resolver, server.connector, rules, record, grant
        )
        host = check_target(request, head)
        refused = server.shares.admit(self, grant.skill if grant is not None else None)
        if refused is not None:  # the skill's own share is full; its siblings' are untouched
            raise Refusal(503, refused)
        self._host = host
        self._request = request
        self._start_dial()

    def _start_dial(self) -> None:
        """Resolve and dial at once when nothing needs awaiting, else in a task.

        A resolver that knows the answer (a table, the test hosts) and a plain TCP dial need no
        task, timeout scope or coroutine: the same checks run straight from this callback
        (docs/architecture.md, decision 46). Name lookups in DNS take the task.
        """
        connect, request = self.server.connect_now, self._request
        assert request is not None  # noqa: S101 - set before the first dial
        if connect is not None and self._dial is not None:  # the last handshake failed
            self.upstream = dial_now(request, self._dial, connect, self._loop)
            self._wait_connected()
            return
        answer_now = self.server.answer_now if connect is not None else None
        answers = immediate_answers(answer_now, self._host) if answer_now is not None else None
        if answers is None:
            self._start_dial_task()
            return
        assert connect is not None  # noqa: S101 - answers come only with a connector
        limit = request.policy.limits.connect_timeout
        self._dial = Dial(check_answers(request, answers), self._loop.time() + limit)
        self.upstream = dial_now(request, self._dial, connect, self._loop)
        self._wait_connected()

    def _start_dial_task(self) -> None:
        coroutine = self._resolve_and_dial()
        if sys.version_info >= (3, 12):  # the image's Python: start it now, not an iteration later
            self.task = asyncio.Task(coroutine, loop=self._loop, eager_start=True)
        else:
            self.task = self._loop.create_task(coroutine)

    async def _resolve_and_dial(self) -> None:
        """Resolve and start the dial (or, after a failed handshake, dial the next address)."""
        request = self._request
        assert request is not None  # noqa: S101 - set before the first dial
        try:
            if self._dial is None:
                self.upstream, self._dial = await resolve_and_dial(request, self._host)
            else:
                self.upstream = await redial(request, self._dial)
        except asyncio.CancelledError:
            self._end()
            raise
        except Refusal as refusal:
            self._refuse(refusal)
            return
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the proxy
            sys.stderr.write(f"proxy: connection {self.conn} failed: {exc!r}\n")
            self._end()
            return
        self.task = None
        self._guard(self._wait_connected)

    def _wait_connected(self) -> None:
        """Wait for the handshake from the writability callback (no task wake-up after it)."""
        upstream, dial = self.upstream, self._dial
        assert upstream is not None  # noqa: S101 - just dialled
        assert dial is not None  # noqa: S101
        upstream.watch_with(self.server.poller)
        error = upstream.handshake_result()
        if error is not None:  # ended inside the connect call (decision 60): no wait
            self._connected(error)
            return
        self._timer = self._loop.call_at(dial.deadline, self._timed_out, 504, "connect-timeout")
        upstream.when_connected(lambda error: self._guard(partial(self._connected, error)))

    def _connected(self, error: int) -> None:
        self._stop_waiting()
        if error:  # refused or unreachable: the next checked address, within the same deadline
            assert self.upstream is not None  # noqa: S101
            self.upstream.abort()
            self.upstream = None
            self._start_dial()
            return
        self._established()

    # --- the ClientHello -----------------------------------------------------------------

    def _established(self) -> None:
        self.client.write(CONNECT_ESTABLISHED)
        if self.client.is_closed:
            raise ConnectionResetError("connection lost")
        if self._data:  # sent along with the request head
            self._read_hello()
        else:  # it comes a round trip after the 200: wait, rather than try a read now
            self._wait_for_hello()

    def _wait_for_hello(self) -> None:
        limit = self._limits.client_hello_timeout
        self._wait_readable(self._read_hello, limit, None, "client-hello-timeout")

    def _read_hello(self) -> None:
        limit = self._limits.max_client_hello_bytes
        while (body := _hello_body(self._data)) is None:
            if len(self._data) >= limit:
                raise Refusal(None, "client-hello-too-large")
            chunk = self.client.recv(limit - len(self._data))
            if chunk is None:
                self._wait_for_hello()
                return
            if not chunk:
                raise Refusal(None, "client-hello-eof")
            self._data += chunk
        self._stop_waiting()  # a refusal stops reading; the splice swaps in its own callback
        check_hello(body, self._host)
        self._allow()

    def _allow(self) -> None:
        """Every check has passed: forward the ClientHello, write the decision, splice."""
        upstream, hello = self.upstream, self._data
        assert upstream is not None  # noqa: S101 - dialled before the 200
        self._data = b""
        grant = self._request.grant if self._request is not None else None
        if self.server.seal.applies(grant, self._host):
            self._terminate(hello)
            return
        upstream.write(hello)  # the audit line need not delay it
        self.stats.up += len(hello)
        self.server.shares.established(self)
        record = self.record
        record.decision, record.reason = "allow", "allowed"
        self.server.audit.decision(self.conn, record)
        splice(self.client, upstream, self.stats, self.server.idle, self._finish)

    def _terminate(self, hello: bytes) -> None:
        """Hand both sockets to the sealed relay (docs/architecture.md, decision 37)."""
        upstream, grant = self.upstream, self._request.grant if self._request else None
        assert upstream is not None  # noqa: S101 - dialled before the 200
        assert grant is not None  # noqa: S101 - applies() needs one
        # Past every check, as a plain tunnel at its splice: no longer pending (decision 71).
        self.server.shares.established(self)
        record = self.record
        record.decision, record.reason = "allow", "allowed"
        self.server.audit.decision(self.conn, record)
        client_sock, pending = self.client.detach()
        upstream_sock, _ = upstream.detach()
        tunnel = SealedTunnel(
            self.conn,
            grant.skill,
            self._host,
            self.server.seal,
            self.server.audit,
            self.stats,
            self._limits,
        )
        self.task = self._loop.create_task(
            relay(tunnel, client_sock, upstream_sock, (pending, hello))
        )
        self.task.add_done_callback(lambda _task: self._finish())

    # --- the end -------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        if refusal.status is not None:
            self.client.write(response(refusal.status, refusal.reason))
        record = self.record
        if refusal.reason != "no-request" and not record.written:  # one line per decision
            record.decision, record.reason = "deny", refusal.reason
            self.server.audit.decision(self.conn, record)
        self._end()

    def _end(self) -> None:
        """Close the client after it has taken our last bytes (cut off after CLOSE_TIMEOUT)."""
        self._stop_reading()
        if self.upstream is not None:
            self.upstream.abort()
        client = self.client
        client.close()
        if client.is_closed:
            self._finish()
            return
        client.on_closed = self._finish
        self._timer = self._loop.call_later(CLOSE_TIMEOUT, client.abort)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self.server.ended(self)
        if self.record.written:  # also when a stop ended us mid-tunnel
            record, stats = self.record, self.stats
            self.server.audit.close(self.conn, record.client, stats.up, stats.down, self.started)


def _refuse_plain_http(head: RequestHead, record: Decision) -> None:
    """Refuse a request that is not CONNECT, naming its host in the record when it has one."""
    if "://" in head.target:
        try:
            record.raw_host = urlsplit(head.target).netloc or head.target
        except ValueError:
            record.raw_host = head.target
    else:
        record.raw_host = head.header("host") or head.target
    raise Refusal(403, "plain-http-refused")


def _hello_body(data: bytes) -> bytes | None:
    try:
        return client_hello_body(data)
    except TlsError as exc:
        raise Refusal(None, exc.reason) from exc


def _raise(refusal: Refusal) -> None:
    raise refusal


def _address_text(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:  # noqa: PLR2004 - (host, port, ...)
        return f"{address[0]}:{address[1]}"
    return str(address)
