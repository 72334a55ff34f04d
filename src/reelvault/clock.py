"""Time as a parameter.

Code that depends on the time takes a :class:`Clock` (or a ``now`` argument) so tests can
move time without sleeping. :class:`SystemClock` is the one-line wall-clock version.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = [
    "Clock",
    "FakeClock",
    "SystemClock",
]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for TTLs and timeouts)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        self._mono += seconds
