"""Single-flight: one fetch per missing key, loads owned by the stack.

Rules for these tests (they must be deterministic on asyncio and trio alike):
- a fetcher blocks on an event the test opens (``GatedFetcher``), never on a timer;
- "every task has reached its await" is ``anyio.wait_all_tasks_blocked()``;
- no sleeps, no timing assertions.
"""

from __future__ import annotations

import anyio
import pytest

from layercache import CacheClosedError, CacheStack, MemoryLayer
from layercache.testing import FakeClock

from ..helpers import GatedFetcher

pytestmark = pytest.mark.anyio


async def _get_into(
    cache: CacheStack, key: str, fetcher: GatedFetcher, results: list[object]
) -> None:
    results.append(await cache.get(key, fetcher))


async def test_stampede_of_1000_callers_runs_the_fetcher_once() -> None:
    fetcher = GatedFetcher()
    results: list[object] = []
    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(_get_into, cache, "hot", fetcher, results)
        await anyio.wait_all_tasks_blocked()
        stats = cache.statistics()
        assert (stats.loads_in_flight, stats.waiters) == (1, 1000)
        fetcher.open()
    assert fetcher.calls == 1
    assert len(results) == 1000
    assert all(result is fetcher.value for result in results)
    stats = cache.statistics()
    assert (stats.fetches, stats.misses, stats.hits) == (1, 1000, 0)


async def test_callers_after_the_load_hit_the_memory_layer() -> None:
    fetcher = GatedFetcher()
    async with CacheStack([MemoryLayer()]) as cache:
        fetcher.open()
        first = await cache.get("k", fetcher)
        assert await cache.get("k", fetcher) is first
        assert fetcher.calls == 1
        assert cache.statistics().layer_hits == {"memory": 1}


async def test_later_callers_share_the_first_callers_load() -> None:
    first = GatedFetcher(value="first")
    second = GatedFetcher(value="second")
    results: list[object] = []
    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tg:
        tg.start_soon(_get_into, cache, "k", first, results)
        await first.started.wait()
        tg.start_soon(_get_into, cache, "k", second, results)
        await anyio.wait_all_tasks_blocked()
        first.open()
    assert results == ["first", "first"]
    assert second.calls == 0


async def test_distinct_keys_load_independently() -> None:
    fetchers = {key: GatedFetcher(value=key) for key in "abc"}
    results: list[object] = []
    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tg:
        for key, fetcher in fetchers.items():
            tg.start_soon(_get_into, cache, key, fetcher, results)
        await anyio.wait_all_tasks_blocked()
        assert cache.statistics().loads_in_flight == 3
        for fetcher in fetchers.values():
            fetcher.open()
    assert sorted(results) == ["a", "b", "c"]  # type: ignore[type-var]
    assert all(fetcher.calls == 1 for fetcher in fetchers.values())


async def test_fetcher_error_reaches_every_waiter_and_is_not_cached() -> None:
    failing = GatedFetcher(error=LookupError("origin is down"))
    errors: list[BaseException] = []

    async def caller(cache: CacheStack) -> None:
        try:
            await cache.get("k", failing)
        except LookupError as error:
            errors.append(error)

    async with CacheStack([MemoryLayer()]) as cache:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(caller, cache)
            await anyio.wait_all_tasks_blocked()
            failing.open()
        assert len(errors) == 10
        assert all(error is errors[0] for error in errors)
        assert failing.calls == 1
        assert await cache.get("k", default="absent") == "absent"
        recovered = GatedFetcher(value="fine")
        recovered.open()
        assert await cache.get("k", recovered) == "fine"
        stats = cache.statistics()
        assert (stats.fetches, stats.fetch_errors, stats.loads_in_flight) == (2, 1, 0)


async def test_cancelling_the_first_caller_does_not_cancel_the_load() -> None:
    fetcher = GatedFetcher()
    results: list[object] = []
    first_scope = anyio.CancelScope()

    async def first_caller(cache: CacheStack) -> None:
        with first_scope:
            results.append(await cache.get("k", fetcher))

    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tg:
        tg.start_soon(first_caller, cache)
        await fetcher.started.wait()
        tg.start_soon(_get_into, cache, "k", fetcher, results)
        await anyio.wait_all_tasks_blocked()
        first_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert not fetcher.cancelled
        assert cache.statistics().waiters == 1
        fetcher.open()
    assert first_scope.cancelled_caught
    assert results == [fetcher.value]
    assert fetcher.calls == 1


async def test_cancelling_a_later_waiter_leaves_the_others_served() -> None:
    fetcher = GatedFetcher()
    results: list[object] = []
    scope = anyio.CancelScope()

    async def cancellable(cache: CacheStack) -> None:
        with scope:
            results.append(await cache.get("k", fetcher))

    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tg:
        tg.start_soon(_get_into, cache, "k", fetcher, results)
        await fetcher.started.wait()
        tg.start_soon(cancellable, cache)
        tg.start_soon(_get_into, cache, "k", fetcher, results)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        fetcher.open()
    assert results == [fetcher.value, fetcher.value]
    assert fetcher.calls == 1
    assert not fetcher.cancelled


async def test_a_load_whose_waiters_all_left_still_fills_the_cache() -> None:
    fetcher = GatedFetcher()
    scopes = [anyio.CancelScope() for _ in range(3)]

    async def caller(cache: CacheStack, scope: anyio.CancelScope) -> None:
        with scope:
            await cache.get("k", fetcher)

    async with CacheStack([MemoryLayer()]) as cache:
        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(caller, cache, scope)
            await anyio.wait_all_tasks_blocked()
            for scope in scopes:
                scope.cancel()
        stats = cache.statistics()
        assert (stats.loads_in_flight, stats.waiters) == (1, 0)
        fetcher.open()
        await anyio.wait_all_tasks_blocked()
        assert cache.statistics().loads_in_flight == 0
        assert await cache.get("k") is fetcher.value
        assert fetcher.calls == 1
        assert not fetcher.cancelled


async def test_exiting_the_stack_cancels_loads_and_releases_their_waiters() -> None:
    fetcher = GatedFetcher()
    outcomes: list[BaseException] = []

    async def waiter(cache: CacheStack) -> None:
        try:
            await cache.get("k", fetcher)
        except CacheClosedError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as outside, CacheStack([MemoryLayer()]) as cache:
        outside.start_soon(waiter, cache)
        await fetcher.started.wait()
        await anyio.wait_all_tasks_blocked()
    assert fetcher.cancelled
    assert len(outcomes) == 1
    assert cache.statistics().loads_in_flight == 0


async def test_fetched_none_is_cached() -> None:
    calls = 0

    async def fetch_none() -> None:
        nonlocal calls
        calls += 1

    async with CacheStack([MemoryLayer()]) as cache:
        assert await cache.get("k", fetch_none, default="default") is None
        assert await cache.get("k", fetch_none, default="default") is None
        assert await cache.get("k", default="default") is None
    assert calls == 1


async def test_fetched_value_is_stored_with_ttl_and_tags(clock: FakeClock) -> None:
    async def fetch() -> str:
        return "value"

    async with CacheStack([MemoryLayer()], clock=clock) as cache:
        await cache.get("a", fetch, ttl=10, tags=["group"])
        await cache.get("b", fetch, tags=["group"])
        await cache.get("c", fetch, ttl=10)
        assert await cache.invalidate_by_tag("group") == 2
        assert await cache.get_many(["a", "b", "c"]) == {"c": "value"}
        clock.advance(10)
        assert await cache.get("c", default="expired") == "expired"


async def test_fetcher_sees_the_callers_context_variables() -> None:
    from contextvars import ContextVar

    request_id: ContextVar[str] = ContextVar("request_id", default="none")

    async def fetch() -> str:
        return request_id.get()

    async with CacheStack([MemoryLayer()]) as cache:
        request_id.set("req-1")
        assert await cache.get("k", fetch) == "req-1"


@pytest.mark.parametrize("change", ["set", "delete", "tag", "expire", "expire tag", "clear"])
async def test_a_change_during_a_load_is_not_overwritten_by_it(change: str) -> None:
    fetcher = GatedFetcher(value="old")
    results: list[object] = []

    async def tagged_get(cache: CacheStack) -> None:
        results.append(await cache.get("k", fetcher, tags=["t"]))

    async with CacheStack([MemoryLayer()]) as cache:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tagged_get, cache)
            await fetcher.started.wait()
            if change == "set":
                await cache.set("k", "new")
            elif change == "delete":
                await cache.delete("k")
            elif change == "tag":
                await cache.invalidate_by_tag("t")
            elif change == "expire":
                assert await cache.expire("k") == 0  # nothing stored yet, and yet a fence
            elif change == "expire tag":
                assert await cache.expire_by_tag("t") == 0
            else:
                await cache.clear()
            fetcher.open()
        # The caller asked before the change finished and gets the load's result...
        assert results == ["old"]
        # ...but the stale result is not written over what the change left.
        expected = "new" if change == "set" else "absent"
        assert await cache.get("k", default="absent") == expected
        assert cache.statistics().stale_loads == 1


async def test_tag_invalidation_only_fences_loads_carrying_the_tag() -> None:
    fetcher = GatedFetcher(value="v")

    async def tagged_get(cache: CacheStack) -> None:
        await cache.get("k", fetcher, tags=["other"])

    async with CacheStack([MemoryLayer()]) as cache:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tagged_get, cache)
            await fetcher.started.wait()
            await cache.invalidate_by_tag("unrelated")
            fetcher.open()
        assert await cache.get("k") == "v"
        assert cache.statistics().stale_loads == 0


async def test_get_without_fetcher_does_not_wait_for_a_load() -> None:
    fetcher = GatedFetcher()
    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tg:
        tg.start_soon(_get_into, cache, "k", fetcher, [])
        await fetcher.started.wait()
        assert await cache.get("k", default="absent") == "absent"
        fetcher.open()


async def test_in_flight_map_is_empty_after_churn() -> None:
    async def fetch() -> int:
        return 1

    async with CacheStack([MemoryLayer(max_size=10)]) as cache:
        async with anyio.create_task_group() as tg:
            for n in range(500):
                tg.start_soon(cache.get, f"key:{n}", fetch)
        stats = cache.statistics()
        assert (stats.loads_in_flight, stats.waiters, stats.fetches) == (0, 0, 500)
        assert stats.layers[0].size == 10


async def test_a_caller_after_a_change_does_not_join_the_stale_load() -> None:
    old = GatedFetcher(value="old")
    new = GatedFetcher(value="new")
    results: list[object] = []
    async with CacheStack([MemoryLayer()]) as cache:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_get_into, cache, "k", old, results)
            await old.started.wait()
            await cache.delete("k")  # the running load is stale from here on
            new.open()
            assert await cache.get("k", new) == "new"  # a fresh load, not the stale one
            old.open()
        assert results == ["old"]  # the first caller asked before the delete
        assert await cache.get("k") == "new"
        assert (old.calls, new.calls) == (1, 1)
