from __future__ import annotations

import math


class FakeClock:
    """A clock that only moves when told to: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("a clock only moves forward by a finite amount")
        self.now += seconds

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now}>"
