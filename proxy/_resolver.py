"""Name resolution, behind a small interface so that tests can inject a stub.

The proxy asks a resolver only for canonical names that the allowlist has already accepted,
and bounds the time of every query itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class ResolveError(Exception):
    """The name has no usable address (NXDOMAIN, no answer, resolver failure)."""


# A resolver's immediate answer for a name, or None when it must be awaited (see
# `StaticResolver.answer_now`): the session then dials without a task (decision 46).
ImmediateAnswer = Callable[[str], list[str] | None]


class Resolver(Protocol):
    """Anything that turns a canonical host name into address strings."""

    async def resolve(self, host: str) -> list[str]:
        """Return the addresses of ``host``, in the order the proxy should prefer them.

        Raises:
            ResolveError: the name has no address.

        """
        ...


class SystemResolver:
    """The real resolver: the C library's getaddrinfo, run in the loop's thread pool.

    Concurrent queries for one name share one lookup: a skill's burst of CONNECTs to its own
    host takes one thread of the small pool, not all of them, so its siblings' lookups are not
    queued behind it (each request still checks every answer itself).
    """

    def __init__(self) -> None:
        """Start with no lookup in flight."""
        self._in_flight: dict[str, asyncio.Future[list[str]]] = {}

    async def resolve(self, host: str) -> list[str]:
        """Resolve ``host`` with getaddrinfo (joining a lookup of it already under way).

        Raises:
            ResolveError: getaddrinfo failed or returned nothing.

        """
        shared = self._in_flight.get(host)
        if shared is None:
            shared = self._in_flight[host] = asyncio.ensure_future(self._lookup(host))
            shared.add_done_callback(partial(self._landed, host))
        # Shielded: one caller's timeout must not cancel the lookup the others wait for.
        return list(await asyncio.shield(shared))

    def _landed(self, host: str, lookup: asyncio.Future[list[str]]) -> None:
        if self._in_flight.get(host) is lookup:
            del self._in_flight[host]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here, in case every caller gave up waiting

    @staticmethod
    async def _lookup(host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, 443, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as exc:
            raise ResolveError(host) from exc
        answers = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not answers:
            raise ResolveError(host)
        return answers


class StaticResolver:
    """A resolver from a fixed table, with a log of every query (for tests and benchmarks).

    Each name maps to a list of answer sets; successive queries walk through them and the
    last one repeats, which is how a rebinding attacker's DNS server behaves.
    """

    def __init__(self, table: Mapping[str, Sequence[Sequence[str]]]) -> None:
        """Build a resolver that answers from ``table`` (name -> successive answer sets)."""
        self._table = {
            name: [list(answer) for answer in answers] for name, answers in table.items()
        }
        self.queries: list[str] = []
        self._counts: dict[str, int] = {}

    async def resolve(self, host: str) -> list[str]:
        """Answer from the table, logging the query.

        Raises:
            ResolveError: the name is not in the table.

        """
        return self.answer_now(host)

    def answer_now(self, host: str) -> list[str]:
        """Answer as :meth:`resolve` does, without a coroutine (a table needs no waiting).

        Raises:
            ResolveError: the name is not in the table.

        """
        self.queries.append(host)
        answers = self._table.get(host)
        if not answers:
            raise ResolveError(host)
        count = self._counts[host] = self._counts.get(host, 0) + 1  # not queries.count: O(1)
        return list(answers[min(count, len(answers)) - 1])
