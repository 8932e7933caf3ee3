"""Freshness against a real Redis, on asyncio and trio: what the memory layer and Redis
each hold, which one answers, and refreshes across stacks sharing a Redis (with the
single-flight coordinator and the bus). The freshness rules alone, on memory-only
stacks, are in tests/unit/test_freshness.py.

Entries are made stale by the stack's injected clock where only memory ages, and by
``expire`` where Redis must hold a stale entry (Redis ages entries by its own clock).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from layercache import (
    CacheStack,
    Freshness,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache.testing import FakeClock, invalidations_received, loads_settled

from ..helpers import GatedFetcher

pytestmark = pytest.mark.anyio

SWR = Freshness(stale_while_revalidate=60, stale_if_error=600, error_backoff=5)


class Never:
    """A fetcher that must not run."""

    calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return "fetched"


@asynccontextmanager
async def _stacks(
    url: str, count: int, *, clock: FakeClock | None = None, shared: bool = False
) -> AsyncIterator[list[CacheStack]]:
    """``count`` stacks of memory + Redis under one prefix; ``shared``: with the
    coordinator and a bus of their own."""
    prefix = f"freshness:{uuid.uuid4().hex[:8]}:"
    async with AsyncExitStack() as exits:
        stacks = []
        for _ in range(count):
            stack = CacheStack(
                [MemoryLayer(), RedisLayer(url=url, prefix=prefix, ttl=300)],
                freshness=SWR,
                clock=clock,
                invalidation_bus=(
                    RedisInvalidationBus(url, channel=prefix + "bus") if shared else None
                ),
                single_flight_coordinator=RedisSingleFlightCoordinator(url) if shared else None,
            )
            stacks.append(await exits.enter_async_context(stack))
        yield stacks


async def test_a_stale_memory_entry_gives_way_to_a_fresh_one_in_redis(redis_server: Any) -> None:
    clock = FakeClock()
    async with _stacks(redis_server.url, 2, clock=clock) as (a, b):
        await a.set("k", "old", ttl={"memory": 5})
        await b.set("k", "new")  # no bus: a's memory still holds "old"
        clock.advance(10)  # a's memory copy is stale; Redis's is fresh
        never = Never()
        assert await a.get("k", never) == "new"
        assert never.calls == 0
        entry = await a.get_entry("k")
        assert entry is not None
        assert (entry.value, entry.layer, entry.state) == ("new", "memory", "fresh")


async def test_a_stale_entry_in_redis_is_served_while_one_stack_refreshes_it(
    redis_server: Any,
) -> None:
    async with _stacks(redis_server.url, 2) as (a, b):
        await a.set("k", "old")
        await a.expire("k")  # stale in memory and in Redis, kept for its window
        fetch = GatedFetcher("new")
        assert await a.get("k", fetch) == "old"  # at once, while the refresh runs
        await fetch.started.wait()
        assert await b.get("k", default="none") == "none"  # without a fetcher: fresh only
        entry = await b.get_entry("k")
        assert entry is not None
        assert (entry.value, entry.layer, entry.state) == ("old", "redis", "stale")
        fetch.open()
        with anyio.fail_after(10):
            await loads_settled(a)
        assert await b.get("k") == "new"  # the refresh reached Redis
        assert a.statistics().stale_hits == 1


async def test_a_failed_fetch_answers_stale_and_leaves_redis_as_it_was(
    redis_server: Any,
) -> None:
    async with _stacks(redis_server.url, 1) as (cache,):
        await cache.set("k", "old")
        await cache.expire("k")
        redis = cache.layers[1]
        assert isinstance(redis, RedisLayer)
        before = (await redis.get_many(["k"]))["k"]

        async def failing() -> str:
            raise ConnectionError("the database is down")

        # Beyond stale_while_revalidate the load waits for the fetch, and falls back.
        late = Freshness(stale_if_error=600, error_backoff=5)
        assert await cache.get("k", failing, freshness=late) == "old"
        after = (await redis.get_many(["k"]))["k"]
        assert after.value == "old"
        assert after.fresh_until is not None
        assert before.fresh_until is not None
        assert after.fresh_until <= before.fresh_until + 0.01  # not rewritten as fresh
        assert cache.statistics().stale_on_error == 1


async def test_one_process_refreshes_the_others_serve_and_hear_of_it(redis_server: Any) -> None:
    async with _stacks(redis_server.url, 2, shared=True) as (a, b):
        await a.set("k", "old")
        with anyio.fail_after(10):
            await invalidations_received(b, 1)  # the set's drop: nothing more to come
        assert await b.get("k") == "old"  # in both memory layers
        await a.expire("k")
        with anyio.fail_after(10):
            await invalidations_received(b, 2)  # b's copy is stale too
        fetch_a, fetch_b = GatedFetcher("new"), Never()
        assert await a.get("k", fetch_a) == "old"
        await fetch_a.started.wait()  # a holds the key's lock
        assert await b.get("k", fetch_b) == "old"
        with anyio.fail_after(10):
            await loads_settled(b)  # its refresh found the lock held, and left
        coordinator = b.statistics().coordinator
        assert coordinator is not None
        assert coordinator.refreshes_elsewhere == 1
        assert fetch_b.calls == 0  # b left the refresh to a
        received = b.statistics().invalidations_received
        fetch_a.open()
        with anyio.fail_after(10):
            await invalidations_received(b, received + 1)  # a's refresh, announced
        assert await b.get("k", fetch_b) == "new"
        assert fetch_b.calls == 0


async def test_a_set_during_a_locked_refresh_keeps_its_result_out_of_redis(
    redis_server: Any,
) -> None:
    async with _stacks(redis_server.url, 1, shared=True) as (a,):
        redis = a.layers[1]
        assert isinstance(redis, RedisLayer)
        await a.set("k", "old")
        await a.expire("k")
        fetch = GatedFetcher("refreshed")
        assert await a.get("k", fetch) == "old"
        await fetch.started.wait()  # a refreshes under the key's lock
        # Another instance, not on a's bus, changes the key meanwhile: only the lock,
        # which the change takes away, can keep the refresh out of Redis.
        async with CacheStack([RedisLayer(url=redis_server.url, prefix=redis.prefix)]) as b:
            await b.set("k", "changed")
        fetch.open()
        with anyio.fail_after(10):
            await loads_settled(a)
        assert (await redis.get_many(["k"]))["k"].value == "changed"
        coordinator = a.statistics().coordinator
        assert coordinator is not None
        assert coordinator.lost == 1  # the set took the lock away: nothing was written
