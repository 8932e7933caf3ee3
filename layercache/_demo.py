"""The stampede demo: N concurrent callers ask for one expired key.

Without a cache each caller queries the origin; with layercache the origin is queried
once and every caller gets the same object. Exits non-zero if that promise is broken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from ._memory import MemoryLayer
from ._stack import CacheStack


@dataclass
class Origin:
    """A stand-in for a database: counts queries and takes ``latency`` per query."""

    latency: float
    queries: int = 0
    in_flight: int = 0
    peak: int = 0

    async def listing(self) -> dict[str, object]:
        self.queries += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.latency)
            return {"products": [f"product:{n}" for n in range(20)], "query": self.queries}
        finally:
            self.in_flight -= 1


@dataclass
class Outcome:
    label: str
    queries: int
    peak_concurrent_queries: int
    seconds: float
    distinct_results: int


async def _without_cache(callers: int, latency: float) -> Outcome:
    origin = Origin(latency)
    results: list[object] = []

    async def caller() -> None:
        results.append(await origin.listing())

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    elapsed = time.perf_counter() - started
    return Outcome("no cache", origin.queries, origin.peak, elapsed, len({id(r) for r in results}))


async def _with_layercache(callers: int, latency: float) -> Outcome:
    origin = Origin(latency)
    results: list[object] = []
    started = time.perf_counter()
    async with CacheStack([MemoryLayer(ttl=60, max_size=10_000)]) as cache:

        async def caller() -> None:
            results.append(await cache.get("products:listing", origin.listing))

        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        stats = cache.statistics()
    elapsed = time.perf_counter() - started
    assert stats.fetches == origin.queries
    return Outcome(
        "layercache", origin.queries, origin.peak, elapsed, len({id(r) for r in results})
    )


async def _demo(callers: int, latency: float) -> list[Outcome]:
    return [await _without_cache(callers, latency), await _with_layercache(callers, latency)]


def run_demo(backend: str, callers: int, latency: float) -> int:
    print(f"layercache demo on {backend}: {callers} concurrent callers ask for one expired key")
    print(f"(the origin takes {latency * 1000:.0f} ms per query)\n")
    outcomes = anyio.run(_demo, callers, latency, backend=backend)
    header = ("", "origin queries", "peak concurrent", "wall time", "distinct objects")
    print(f"{header[0]:12} {header[1]:>15} {header[2]:>16} {header[3]:>10} {header[4]:>17}")
    for o in outcomes:
        print(
            f"{o.label:12} {o.queries:>15} {o.peak_concurrent_queries:>16} "
            f"{o.seconds * 1000:>8.1f}ms {o.distinct_results:>17}"
        )
    cached = outcomes[1]
    ok = cached.queries == 1 and cached.distinct_results == 1
    print()
    if ok:
        print(f"OK: {callers} callers, 1 origin query, every caller got the same object.")
        return 0
    print(
        f"FAILED: expected 1 origin query and 1 shared object, got {cached.queries} and "
        f"{cached.distinct_results}."
    )
    return 1
