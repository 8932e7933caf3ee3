"""Incident 1, the stampede: a crowd of callers misses one key at the same moment, on
two app instances at once.

Without a cache every caller queries the origin. With layercache (memory + Redis) each
instance queries it once and all its callers get the same object; with the Redis
single-flight coordinator as well, the two instances query it once in all.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio

from ._report import Result, duration, plural, say
from ._stacks import clear_prefix, instance, new_prefix

KEY = "products:listing"


POOL = 50
"""Connections of the stand-in database: queries beyond that many wait their turn."""


@dataclass
class Origin:
    """A stand-in for a database: counts queries, takes ``latency`` per query, and
    runs at most :data:`POOL` at once (as a real one's connection pool would)."""

    latency: float
    queries: int = 0
    in_flight: int = 0
    peak: int = 0
    pool: anyio.Semaphore | None = None

    async def listing(self) -> dict[str, object]:
        self.queries += 1
        if self.pool is None:
            self.pool = anyio.Semaphore(POOL)
        async with self.pool:
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
    """The same double crowd (instances A and B at once) three ways."""

    no_cache: tuple[Crowd, Crowd]
    per_instance: tuple[Crowd, Crowd]
    """layercache without the Redis coordinator: single-flight within each instance."""
    coordinated: tuple[Crowd, Crowd]
    """With ``RedisSingleFlightCoordinator``: single-flight across instances."""

    def result(self) -> Result:
        problems: list[str] = []
        callers = sum(crowd.callers for crowd in self.no_cache)
        without = sum(crowd.queries for crowd in self.no_cache)
        if without != callers:
            problems.append(
                f"without a cache {callers} callers made {without} queries: "
                "the stampede was not reproduced"
            )
        for setup, crowds, most in (
            ("without the coordinator", self.per_instance, 2),
            ("with the coordinator", self.coordinated, 1),
        ):
            # Without the coordinator each instance queries at most once (the second
            # may find the first one's value in Redis already); with it, once in all.
            queries = sum(crowd.queries for crowd in crowds)
            if not 1 <= queries <= most:
                expected = "1 or 2" if most == 2 else "1"
                problems.append(
                    f"{setup} A and B made {queries} origin queries, expected {expected}"
                )
            for name, crowd in zip("AB", crowds, strict=True):
                if crowd.queries > 1:
                    problems.append(f"{setup} instance {name} made {crowd.queries} origin queries")
                if crowd.distinct_objects != 1:
                    problems.append(
                        f"{setup} instance {name} handed its callers "
                        f"{crowd.distinct_objects} distinct objects, expected 1"
                    )
        coordinated = sum(crowd.queries for crowd in self.coordinated)
        return Result(
            "1 stampede",
            plural(without, "origin query", "origin queries"),
            f"{plural(coordinated, 'origin query', 'origin queries')} for {callers} callers "
            "on 2 instances",
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
        f"[1/6] Stampede: {callers} concurrent callers on each of two instances, A and B, "
        "ask for one expired key"
    )
    say(
        f"      at the same moment (the origin takes {duration(origin_latency)} a query, "
        f"{POOL} at a time)"
    )
    no_cache = await _two_crowds(callers, origin_latency, None, None)
    say(f"      without a cache:         A {no_cache[0].describe()}")
    say(f"                               B {no_cache[1].describe()}")
    outcomes: list[tuple[Crowd, Crowd]] = []
    for coordinated, label in ((False, "memory + Redis:"), (True, "+ the coordinator:")):
        prefix = new_prefix("stampede")
        try:
            crowds = await _two_crowds(callers, origin_latency, redis_url, prefix, coordinated)
        finally:
            await clear_prefix(redis_url, prefix)
        say(f"      {label:24} A {crowds[0].describe()}")
        say(f"                               B {crowds[1].describe()}")
        outcomes.append(crowds)
    return StampedeFigures(no_cache, outcomes[0], outcomes[1]).result()


async def _two_crowds(
    callers: int,
    origin_latency: float,
    redis_url: str | None,
    prefix: str | None,
    coordinated: bool = False,
) -> tuple[Crowd, Crowd]:
    """A crowd on each of two instances at once (fresh stacks, their L1s empty), or
    straight at the origin without ``redis_url``. Both instances are up before either
    crowd starts; each counts its own queries to the one origin."""
    origins = (Origin(origin_latency), Origin(origin_latency))
    calls: list[Callable[[], Awaitable[object]]] = []
    async with AsyncExitStack() as stacks:
        for origin in origins:
            if redis_url is None or prefix is None:
                calls.append(origin.listing)
                continue
            cache = await stacks.enter_async_context(
                instance(redis_url, prefix, single_flight=coordinated)
            )
            calls.append(functools.partial(cache.get, KEY, origin.listing))
        found: list[Crowd | None] = [None, None]

        async def on(index: int) -> None:
            found[index] = await _crowd(callers, origins[index], calls[index])

        async with anyio.create_task_group() as crowds:
            crowds.start_soon(on, 0)
            crowds.start_soon(on, 1)
    crowd_a, crowd_b = found
    assert crowd_a is not None
    assert crowd_b is not None
    return crowd_a, crowd_b
