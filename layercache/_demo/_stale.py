"""Incident 3, stale L1 across instances: an update on one instance, the old value on
another.

Two stacks, A and B, each a memory layer in front of the same Redis. Both read a price
through the cache (A fetches it from the database, B finds it in Redis), so it sits in
both L1s; then A updates it. Without a bus, B keeps serving the old price from its L1
until the entry expires. With ``RedisInvalidationBus`` on both, A's update makes B drop
its copy, and B's next read finds the new price in Redis: the demo measures how long
after A's update B first serves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from .._stack import CacheStack
from ._report import Result, duration, plural, poll_until, say
from ._stacks import clear_prefix, instance, memory_of, new_prefix

KEY = "price:42"
OLD, NEW = 100, 120
WATCH = 0.25
"""Seconds B is watched after A's update, without a bus."""
WATCH_EVERY = 0.01
DEADLINE = 5.0
"""Seconds B may take to serve the new value, with the bus, before the scenario fails."""


@dataclass(frozen=True, slots=True)
class StaleFigures:
    reads_without_bus: int
    stale_without_bus: int
    l1_ttl_left: float | None
    """Seconds B's stale L1 entry had left to live (None: B no longer held it)."""
    fresh_after: float | None
    """Seconds from A's update until B served the new value; None: not within DEADLINE."""
    received: int

    def result(self) -> Result:
        problems: list[str] = []
        if self.reads_without_bus == 0 or self.stale_without_bus != self.reads_without_bus:
            problems.append(
                f"without a bus B served the old value in {self.stale_without_bus} of "
                f"{self.reads_without_bus} reads: the incident was not reproduced"
            )
        if self.fresh_after is None:
            problems.append(
                f"with the bus B still served the old value {duration(DEADLINE)} after A's update"
            )
        ttl = "" if self.l1_ttl_left is None else f" (L1 TTL {duration(self.l1_ttl_left)})"
        return Result(
            "3 stale L1",
            f"B stale in {self.stale_without_bus}/{self.reads_without_bus} reads{ttl}",
            "B never fresh"
            if self.fresh_after is None
            else f"B fresh after {duration(self.fresh_after)}",
            tuple(problems),
        )


async def stale_l1(redis_url: str) -> Result:
    say(f"[3/6] Stale L1 across instances: A and B both hold {KEY} in L1, then A updates it")
    reads, stale, ttl_left = await _without_bus(redis_url)
    ttl = "" if ttl_left is None else f" (L1 TTL left: {duration(ttl_left)})"
    say(
        f"      without a bus: B served the old price in {stale}/{plural(reads, 'read')} "
        f"over {duration(WATCH)}{ttl}"
    )
    fresh_after, received = await _with_bus(redis_url)
    if fresh_after is None:
        outcome = f"still the old price after {duration(DEADLINE)}"
    else:
        outcome = f"the new price {duration(fresh_after)} after A's update"
    say(
        f"      with RedisInvalidationBus: B served {outcome} "
        f"({plural(received, 'invalidation')} received)"
    )
    return StaleFigures(reads, stale, ttl_left, fresh_after, received).result()


async def _without_bus(redis_url: str) -> tuple[int, int, float | None]:
    prefix = new_prefix("stale")
    try:
        async with instance(redis_url, prefix) as a, instance(redis_url, prefix) as b:
            await _cache_everywhere(a, b)
            await a.set(KEY, NEW)
            reads = stale = 0
            with anyio.move_on_after(WATCH):
                while True:
                    reads += 1
                    stale += await b.get(KEY) == OLD
                    await anyio.sleep(WATCH_EVERY)
            memory = memory_of(b)
            hit = memory.get_many_nowait([KEY]).get(KEY)
            ttl_left = None if hit is None else hit.remaining(memory.clock())
    finally:
        await clear_prefix(redis_url, prefix)
    return reads, stale, ttl_left


async def _with_bus(redis_url: str) -> tuple[float | None, int]:
    prefix = new_prefix("bus")
    try:
        async with (
            instance(redis_url, prefix, bus=True) as a,
            instance(redis_url, prefix, bus=True) as b,
        ):
            await _cache_everywhere(a, b)
            received = b.statistics().invalidations_received

            async def b_is_fresh() -> bool:
                return bool(await b.get(KEY) == NEW)

            started = time.perf_counter()
            await a.set(KEY, NEW)
            waited = await poll_until(b_is_fresh, DEADLINE)
            fresh_after = None if waited is None else time.perf_counter() - started
            received = b.statistics().invalidations_received - received
    finally:
        await clear_prefix(redis_url, prefix)
    return fresh_after, received


async def _cache_everywhere(a: CacheStack, b: CacheStack) -> None:
    """Both instances read the old price: A from the database, B from Redis."""

    async def database() -> int:
        return OLD

    for cache in (a, b):
        await cache.get(KEY, database)
