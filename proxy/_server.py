"""The listening side: accept, enforce the connection cap, dispatch one request, audit it.

Each connection carries exactly one request. After a refusal, a health answer or the end of a
tunnel the connection is closed, so no second request (and no Host-header game on a
kept-alive connection) is ever interpreted.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from proxy._audit import AuditLog, Decision
from proxy._connection import Connection, TunnelStats, splice
from proxy._http import Refusal, RequestHead, parse_head, read_head, request_line, response
from proxy._netrules import AddressRules, parse_address
from proxy._tunnel import Connector, TunnelRequest, open_tunnel, open_upstream

if TYPE_CHECKING:
    from proxy._policy import Policy
    from proxy._resolver import Resolver

HEALTH_PATH: Final = "/healthz"
# A closing client gets this long to take our last bytes (a refusal) before it is cut off.
CLOSE_TIMEOUT: Final = 5.0


class ProxyServer:
    """An allowlist-enforcing CONNECT proxy bound to one or more listening addresses."""

    def __init__(
        self,
        policy: Policy,
        resolver: Resolver,
        audit: AuditLog,
        connector: Connector = open_upstream,
    ) -> None:
        """Hold the collaborators; nothing listens until :meth:`start`."""
        self.policy = policy
        self.resolver = resolver
        self.audit = audit
        self.connector = connector
        self.active = 0
        self._ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._rules = policy.addresses

    async def start(self, listen: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Listen on every ``(host, port)``; return the bound addresses (port 0 picks one).

        Raises:
            OSError: an address cannot be bound.

        """
        loop = asyncio.get_running_loop()
        bound: list[tuple[str, int]] = []
        for host, port in listen:
            server = await loop.create_server(
                lambda: Connection(on_connect=self._accept), host, port, backlog=1024
            )
            self._servers.append(server)
            bound += [sock.getsockname()[:2] for sock in server.sockets]
        own = [parse_address(host) for host, _ in bound]
        self._rules = self._rules.with_own(a for a in own if a is not None and not a.is_unspecified)
        return bound

    async def close(self) -> None:
        """Stop listening and end every connection (tunnels included), then return."""
        for server in self._servers:
            server.close()
        # Since Python 3.12 wait_closed() waits for every connection, and a tunnel may idle
        # for minutes: end them first (each handler closes its sockets as it unwinds).
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def _accept(self, client: Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, client: Connection) -> None:
        conn, started = next(self._ids), time.monotonic()
        record = Decision(client=_address_text(client.peername()))
        stats = TunnelStats()
        self.active += 1
        try:
            await self._serve(conn, client, record, stats)
        except Refusal as refusal:
            self._refuse(conn, client, record, refusal)
        except OSError:  # the client went away mid-request (e.g. before our 200 reached it)
            self._refuse(conn, client, record, Refusal(None, "client-gone"))
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the proxy
            sys.stderr.write(f"proxy: connection {conn} failed: {exc!r}\n")
        finally:
            self.active -= 1
            await client.close_within(CLOSE_TIMEOUT)
            if record.written:  # also when a stop cancelled us mid-tunnel
                self.audit.close(conn, record.client, stats.up, stats.down, started)

    async def _serve(
        self, conn: int, client: Connection, record: Decision, stats: TunnelStats
    ) -> None:
        """Read and answer one request (a refusal is raised, an allowed tunnel spliced)."""
        limits = self.policy.limits
        if self.active > limits.max_connections:
            raise Refusal(503, "too-many-connections")
        try:
            async with asyncio.timeout(limits.header_timeout):
                raw, early = await read_head(client, limits.max_header_bytes)
        except TimeoutError as exc:
            raise Refusal(408, "header-timeout") from exc
        record.raw_host = request_line(raw)
        head = parse_head(raw)
        record.method, record.raw_host = head.method, head.target
        if head.method == "GET" and head.target == HEALTH_PATH:
            client.write(response(200, "ok"))
            return
        if head.method != "CONNECT":
            _refuse_plain_http(head, record)
        rules = self._rules_for(client)
        request = TunnelRequest(self.policy, self.resolver, self.connector, rules, record)
        upstream, hello = await open_tunnel(request, head, client, early)
        upstream.write(hello)  # every check has passed; the audit line need not delay it
        stats.up += len(hello)
        record.decision, record.reason = "allow", "allowed"
        self.audit.decision(conn, record)
        await splice(client, upstream, stats, limits.idle_timeout)

    def _rules_for(self, client: Connection) -> AddressRules:
        """Add the address this client reached us on: with a wildcard listen it is ours too."""
        sockname = client.sockname()
        local = parse_address(str(sockname[0])) if isinstance(sockname, tuple) else None
        return self._rules.with_own([local] if local is not None else [])

    def _refuse(self, conn: int, client: Connection, record: Decision, refusal: Refusal) -> None:
        if refusal.status is not None:
            client.write(response(refusal.status, refusal.reason))
        if refusal.reason == "no-request" or record.written:
            return  # a bare TCP connect (a port probe) is not a request; one line per decision
        record.decision, record.reason = "deny", refusal.reason
        self.audit.decision(conn, record)


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


def _address_text(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:  # noqa: PLR2004 - (host, port, ...)
        return f"{address[0]}:{address[1]}"
    return str(address)
