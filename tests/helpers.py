"""Test helpers: a fetcher the test opens and closes by hand, and bad durations."""

from __future__ import annotations

import math
from typing import Any

import anyio

from layercache._validation import MAX_TTL

BAD_DURATIONS: list[tuple[Any, type[Exception]]] = [
    (None, TypeError),  # only a TTL may be None (the layer's default)
    ("1", TypeError),
    (True, TypeError),
    (0, ValueError),
    (-1.0, ValueError),
    (math.inf, ValueError),
    (math.nan, ValueError),
    (MAX_TTL * 10, ValueError),
]
"""Every duration (timeout, lease, interval…) refuses these, with the error given."""


class GatedFetcher:
    """A fetcher that counts calls and blocks until the test calls ``open()``.

    Create it inside the test (it holds anyio events). ``started`` is set when a call
    begins; ``cancelled`` records whether a call was cancelled while blocked.
    """

    def __init__(self, value: object | None = None, error: Exception | None = None) -> None:
        self.value = object() if value is None else value
        self.error = error
        self.calls = 0
        self.cancelled = False
        self.started = anyio.Event()
        self._gate = anyio.Event()

    def open(self) -> None:
        self._gate.set()

    async def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        try:
            await self._gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return self.value
