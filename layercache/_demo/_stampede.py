"""Incident 1, the stampede: a crowd of callers misses one key at the same moment.

Without a cache every caller queries the origin. With layercache, instance A (memory +
Redis) queries it once and all its callers get the same object; instance B, a second
stack on the same Redis, serves its own crowd from Redis without a single query.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from ._report import Result, duration, plural, say
from ._stacks import clear_prefix, instance, new_prefix

KEY = "products:listing"


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


@dataclass(frozen=True, slots=True)
class Crowd:
    """What one crowd of concurrent callers cost the origin, and what it received."""

    callers: int
    queries: int
    peak_queries: int
    seconds: float
    distinct_objects: int

    def describe(self) -> str:
        queries = plural(self.queries, "origin query", "origin queries")
        if self.peak_queries > 1:
            queries += f" ({self.peak_queries} at once)"
        objects = plural(self.distinct_objects, "distinct object")
        return f"{queries}, {self.callers} callers got {objects}, {duration(self.seconds)}"


@dataclass(frozen=True, slots=True)
class StampedeFigures:
    no_cache: Crowd
    instance_a: Crowd
    instance_b: Crowd

    def result(self) -> Result:
        problems: list[str] = []
        if self.no_cache.queries != self.no_cache.callers:
            problems.append(
                f"without a cache {self.no_cache.callers} callers made "
                f"{self.no_cache.queries} queries: the stampede was not reproduced"
            )
        for name, crowd, expected in (("A", self.instance_a, 1), ("B", self.instance_b, 0)):
            if crowd.queries != expected:
                problems.append(
                    f"instance {name} made {crowd.queries} origin queries, expected {expected}"
                )
            if crowd.distinct_objects != 1:
                problems.append(
                    f"instance {name} handed its callers {crowd.distinct_objects} distinct "
                    "objects, expected 1"
                )
        callers = self.instance_a.callers + self.instance_b.callers
        queries = self.instance_a.queries + self.instance_b.queries
        return Result(
            "1 stampede",
            plural(self.no_cache.queries, "origin query", "origin queries"),
            f"{plural(queries, 'origin query', 'origin queries')} for {callers} callers",
            tuple(problems),
        )


async def _crowd(callers: int, origin: Origin, call: Callable[[], Awaitable[object]]) -> Crowd:
    """Run ``callers`` concurrent calls and measure them."""
    results: list[object] = []

    async def caller() -> None:
        results.append(await call())

    queries_before = origin.queries
    origin.peak = 0
    started = time.perf_counter()
    async with anyio.create_task_group() as callers_group:
        for _ in range(callers):
            callers_group.start_soon(caller)
    return Crowd(
        callers=callers,
        queries=origin.queries - queries_before,
        peak_queries=origin.peak,
        seconds=time.perf_counter() - started,
        distinct_objects=len({id(result) for result in results}),
    )


async def stampede(redis_url: str, callers: int, origin_latency: float) -> Result:
    say(
        f"[1/4] Stampede: {callers} concurrent callers ask for one expired key (the origin "
        f"takes {duration(origin_latency)} a query),"
    )
    say("      without a cache, then on instance A (memory + Redis), then on B (same Redis)")
    origin = Origin(origin_latency)
    no_cache = await _crowd(callers, origin, origin.listing)
    say(f"      without a cache: {no_cache.describe()}")

    prefix = new_prefix("stampede")
    origin = Origin(origin_latency)
    try:
        instance_a = await _on_instance(redis_url, prefix, callers, origin)
        say(f"      instance A:      {instance_a.describe()}")
        instance_b = await _on_instance(redis_url, prefix, callers, origin)
        say(f"      instance B:      {instance_b.describe()}")
    finally:
        await clear_prefix(redis_url, prefix)
    return StampedeFigures(no_cache, instance_a, instance_b).result()


async def _on_instance(redis_url: str, prefix: str, callers: int, origin: Origin) -> Crowd:
    """A crowd on a fresh stack: an instance that just started, its L1 empty."""
    async with instance(redis_url, prefix) as cache:

        async def get_listing() -> object:
            return await cache.get(KEY, origin.listing)

        return await _crowd(callers, origin, get_listing)
