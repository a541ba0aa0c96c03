"""A fake clock for the unit tests of code that takes its clock and its sleep as arguments."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when the code under test sleeps (or a test moves it)."""

    def __init__(self) -> None:
        """Start at zero."""
        self.now = 0.0

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the fake time instead of waiting."""
        self.now += seconds
