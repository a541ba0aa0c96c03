"""Patience with an engine that does not answer: what removal repeats, how often, how long.

Under 40 force-removals at once on 2 cores the engine stalled for minutes ("get state ...
context deadline exceeded", API reads timing out after 120 s), and removers that gave up after
3 minutes left dozens of objects that only `gc` found. So an owner's teardown and its reaper's
sweep repeat a removal while the engine is unreachable, timing out or busy, backing off, for
up to `PATIENCE_S`; a permanent refusal ends them at once (docs/architecture.md, decision 66).

Only the standard library is imported here: the reaper imports this module while it waits.
"""

from __future__ import annotations

import random
from typing import Final

# A stall of the engine lasts minutes; an engine down for longer than this is someone's to fix,
# and `gc` (or the next `serve`) removes what is left. Each engine call is bounded on its own
# (docker_edge.API_TIMEOUT_S), so a removal ends at most one pass after this.
PATIENCE_S: Final = 1800.0
BACKOFF_FIRST_S: Final = 0.5  # a network still in use is usually free again by then
# The longest wait between two attempts: an engine back from a stall is used within this, and
# 40 reapers polling a stalled engine add at most 40 calls per this many seconds.
BACKOFF_MAX_S: Final = 30.0


class Backoff:
    """Delays that double from `BACKOFF_FIRST_S` up to `BACKOFF_MAX_S`, each jittered.

    The jitter (each delay is drawn between its half and its whole) spreads the retries of
    many removers that failed together, so they do not come back to the engine in one burst.
    """

    def __init__(self) -> None:
        """Start at the first delay."""
        self._next = BACKOFF_FIRST_S

    def next_delay(self) -> float:
        """Return the delay to wait now, and double the next one (up to the maximum)."""
        delay, self._next = self._next, min(self._next * 2, BACKOFF_MAX_S)
        return random.uniform(delay / 2, delay)  # noqa: S311 - spreading retries, not a secret

    def reset(self) -> None:
        """Start again at the first delay (the engine answered)."""
        self._next = BACKOFF_FIRST_S
