"""Who holds the proxy's connection slots: one bounded share per skill, one for strangers.

All the skills of a sandbox share one proxy, and the proxy cannot tell which skill opened a
connection until its request head (and credential) has arrived. So (docs/architecture.md,
decision 40):

- a connection whose head has not arrived yet is *unauthenticated*. They share a bounded pool;
  when it is full, the oldest of them is evicted (refused) to make room. A skill flooding the
  pool with silent connections evicts its own; a sibling's head arrives within a round trip,
  long before hundreds of newer connections could push it out;
- a connection whose credential named a skill counts against that skill from the moment it
  passed every check (just before the dial) until it closes: at most
  ``max_connections_per_skill`` open, and at most ``max_pending_per_skill`` of them not yet
  spliced (resolving, dialling, or waiting for the ClientHello);
- the per-skill share is also capped so that every skill's share and the unauthenticated pool
  together fit under ``max_connections``: a full skill, idle tunnels and all, never reaches
  the global cap that would refuse its siblings.

The class is pure bookkeeping (no sockets, no clock): the server and session call it and act
on what it answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:
    from ._policy import Limits

Key = TypeVar("Key")

SKILL_CONNECTION_LIMIT: Final = "skill-connection-limit"
SKILL_PENDING_LIMIT: Final = "skill-pending-limit"
UNAUTHENTICATED_EVICTED: Final = "too-many-unauthenticated"


def skill_share(limits: Limits, skills: int) -> int:
    """Return the connections one skill may hold: its limit, cut so that all shares fit."""
    room = limits.max_connections - unauthenticated_share(limits)
    return max(1, min(limits.max_connections_per_skill, room // max(1, skills)))


def unauthenticated_share(limits: Limits) -> int:
    """Return how many connections may wait for their request head at once."""
    return max(1, min(limits.max_unauthenticated, limits.max_connections))


class Shares(Generic[Key]):
    """The counts behind the per-skill limits and the unauthenticated pool."""

    def __init__(self, limits: Limits, skills: int) -> None:
        """Size the shares for a policy with ``skills`` skills (0: no per-skill limits)."""
        self.unauthenticated_limit = unauthenticated_share(limits)
        self.connection_limit = skill_share(limits, skills)
        self.pending_limit = limits.max_pending_per_skill
        # Insertion order is age order: the first key is the oldest (dicts keep it).
        self._waiting: dict[Key, None] = {}
        self._skill_of: dict[Key, str] = {}
        self._pending: set[Key] = set()
        self.open: dict[str, int] = {}
        self.pending: dict[str, int] = {}

    @property
    def unauthenticated(self) -> int:
        """How many connections wait for their request head now."""
        return len(self._waiting)

    def opened(self, key: Key) -> Key | None:
        """Count a new connection as unauthenticated; return the one to evict when full."""
        self._waiting[key] = None
        if len(self._waiting) <= self.unauthenticated_limit:
            return None
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        return oldest

    def heard(self, key: Key) -> None:
        """Take ``key`` out of the unauthenticated pool: its request head has arrived."""
        self._waiting.pop(key, None)

    def admit(self, key: Key, skill: str | None) -> str | None:
        """Count ``key`` against ``skill`` (None: no per-skill limits); return a refusal reason.

        A refused key is counted nowhere: its connection is answered and closed.
        """
        self._waiting.pop(key, None)
        if skill is None:
            return None
        if self.open.get(skill, 0) >= self.connection_limit:
            return SKILL_CONNECTION_LIMIT
        if self.pending.get(skill, 0) >= self.pending_limit:
            return SKILL_PENDING_LIMIT
        self._skill_of[key] = skill
        self._pending.add(key)
        self.open[skill] = self.open.get(skill, 0) + 1
        self.pending[skill] = self.pending.get(skill, 0) + 1
        return None

    def established(self, key: Key) -> None:
        """Stop counting ``key`` as pending: its tunnel is spliced."""
        if key in self._pending:
            self._pending.discard(key)
            self.pending[self._skill_of[key]] -= 1

    def released(self, key: Key) -> None:
        """``key`` has closed: give back whatever it held."""
        self._waiting.pop(key, None)
        self.established(key)
        skill = self._skill_of.pop(key, None)
        if skill is not None:
            self.open[skill] -= 1
