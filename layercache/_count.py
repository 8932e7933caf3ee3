"""A counter that tasks can wait on.

The bus listener counts the messages it applied and its re-subscriptions with it, so a
task can wait for the n-th one instead of polling or sleeping (``layercache.testing``
offers that to tests of several instances; the benchmarks time deliveries with it).
Counting costs an attribute test more than ``+= 1`` while nobody waits.
"""

from __future__ import annotations

import anyio


class WatchedCount:
    """An int that only grows; :meth:`reached` waits until it is at least a value."""

    __slots__ = ("_waiting", "value")

    def __init__(self) -> None:
        self.value = 0
        self._waiting: anyio.Event | None = None

    def __repr__(self) -> str:
        return str(self.value)

    def add(self, count: int = 1) -> None:
        self.value += count
        waiting = self._waiting
        if waiting is not None:  # someone waits: wake them to look again
            self._waiting = None
            waiting.set()

    async def reached(self, value: int) -> None:
        """Return once the count is at least ``value`` (at once if it is already)."""
        while self.value < value:
            if self._waiting is None:
                self._waiting = anyio.Event()
            await self._waiting.wait()
