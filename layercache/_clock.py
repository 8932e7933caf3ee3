"""Where layercache reads the time.

TTLs, sweeps and back-off windows use the event loop's clock (or a clock the caller
injects, such as :class:`layercache.testing.FakeClock`), never the wall clock, so tests
can move time without sleeping and trio's ``MockClock`` works unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

Clock = Callable[[], float]
"""A zero-argument callable returning seconds on a monotonic scale."""


def loop_clock() -> Clock:
    """Return the running event loop's clock as a cheap bound callable.

    ``anyio.current_time()`` detects the backend on every call (about 0.5 µs); a memory
    hit must cost about 1 µs, so the stack resolves the backend's clock once, on entry.
    """
    try:
        import sniffio  # installed with trio; absent means asyncio
    except ImportError:  # pragma: no cover - trio is not installed
        library = "asyncio"
    else:
        library = sniffio.current_async_library()
    if library == "trio":
        import trio

        return trio.current_time
    return asyncio.get_running_loop().time
