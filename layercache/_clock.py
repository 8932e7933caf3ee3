"""Where layercache reads the time.

TTLs, sweeps and back-off windows use the event loop's clock (or a clock the caller
injects, such as :class:`layercache.testing.FakeClock`), never the wall clock, so tests
can move time without sleeping and trio's ``MockClock`` works unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ._backend import running_library

Clock = Callable[[], float]
"""A zero-argument callable returning seconds on a monotonic scale."""


def deadline_clock() -> Clock:
    """Return exactly what ``anyio.current_time()`` reads, as a direct callable.

    For deadlines handed to cancel scopes, which must be on the loop's own clock (trio's
    adds a random offset to ``perf_counter``), without anyio's look-up of the running
    backend on every call: a Redis request reads the time two or three times.
    """
    if running_library() == "trio":
        import trio

        return trio.lowlevel.current_clock().current_time  # what trio.current_time calls
    return asyncio.get_running_loop().time


def loop_clock() -> Clock:
    """Return the running event loop's clock as the cheapest equivalent callable.

    A memory hit reads the clock and must cost well under a microsecond, so the stack
    resolves the clock once, on entry. Deadlines are only ever compared with readings
    of the same callable, so a clock that differs from the loop's by a constant offset
    is the same clock for TTLs: where the loop runs its default real-time clock, the C
    function underneath is used directly (``time.monotonic`` for asyncio's default loop,
    ``time.perf_counter`` for trio's ``SystemClock``, 40 ns instead of 80-170 ns).
    A mock or custom loop clock is always called as it is, through the clock object
    itself rather than ``trio.current_time`` (which looks up the run in the calling
    thread): ``statistics()`` reads it from any thread.
    """
    if running_library() == "trio":
        import trio

        clock = trio.lowlevel.current_clock()
        kind = type(clock)
        if kind.__name__ == "SystemClock" and kind.__module__.startswith("trio."):
            return time.perf_counter
        return clock.current_time
    loop = asyncio.get_running_loop()
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time
