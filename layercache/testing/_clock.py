from __future__ import annotations

import math


class FakeClock:
    """A clock that only moves when told to: ``clock.advance(seconds)``.

    Pass it as ``CacheStack(clock=...)``: memory-layer TTLs and the graceful
    degradation and circuit-breaker windows then follow it, on asyncio and trio alike,
    so a test steps past a deadline without sleeping. Timeouts, back-off and the sweep
    interval stay on the event loop's clock, and Redis keeps its own time: TTLs stored
    in Redis expire on the server's clock whatever this one says.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        """The current reading, in seconds."""

    def __call__(self) -> float:
        """The current reading (what the stack calls)."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``.

        :raises ValueError: a negative or non-finite amount.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("a clock only moves forward by a finite amount")
        self.now += seconds

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now}>"
