"""``RedisSingleFlightCoordinator``: one fetch per key across stacks sharing a Redis.

Each stack here stands for a process (its own coordinator, connection and memory layer);
tests/integration/test_multiprocess.py runs the same protocol across real processes. Real
redis-server, both backends. Waiting is on events: the test learns that a stack is
waiting for another's lock by wrapping that stack's ``waiting`` hook, never by sleeping.
Dead holders are simulated with a lock written by hand, with a short lease.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
import redis

from layercache import (
    CacheClosedError,
    CacheStack,
    GracefulDegradation,
    LayerUnavailableError,
    MemoryLayer,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache._distributed import Wait
from layercache.testing import RedisServer

from ..helpers import GatedFetcher

pytestmark = pytest.mark.anyio


@pytest.fixture
def raw(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def _stack(url: str, prefix: str, **options: Any) -> CacheStack:
    coordinator = RedisSingleFlightCoordinator(
        url,
        lease=options.pop("lease", 30.0),
        wait_timeout=options.pop("wait_timeout", 10.0),
    )
    return CacheStack(
        [MemoryLayer(), RedisLayer(url=url, prefix=prefix)],
        single_flight_coordinator=coordinator,
        **options,
    )


def _coordinator(cache: CacheStack) -> RedisSingleFlightCoordinator:
    coordinator = cache.single_flight_coordinator
    assert coordinator is not None
    return coordinator


def _signal_waiting(cache: CacheStack) -> anyio.Event:
    """An event set when ``cache`` starts waiting for a lock held elsewhere."""
    coordinator = _coordinator(cache)
    event = anyio.Event()
    original = coordinator.waiting

    def waiting() -> Wait:
        event.set()
        return original()

    coordinator.waiting = waiting  # type: ignore[method-assign]
    return event


@asynccontextmanager
async def _stacks(
    url: str, prefix: str, count: int, **options: Any
) -> AsyncIterator[list[CacheStack]]:
    async with AsyncExitStack() as exits:
        yield [
            await exits.enter_async_context(_stack(url, prefix, **dict(options)))
            for _ in range(count)
        ]


async def _crowd(
    cache: CacheStack, key: str, fetcher: Any, callers: int, out: list[object]
) -> None:
    async with anyio.create_task_group() as tasks:
        for _ in range(callers):

            async def call() -> None:
                out.append(await cache.get(key, fetcher))

            tasks.start_soon(call)


# -- across stacks -------------------------------------------------------------------------


async def test_stacks_sharing_redis_run_the_fetcher_once(
    redis_server: RedisServer, prefix: str
) -> None:
    with anyio.fail_after(20):
        async with _stacks(redis_server.url, prefix, 3) as stacks:
            fetchers = [GatedFetcher({"listing": [1, 2, 3]}) for _ in stacks]
            waiting = [_signal_waiting(cache) for cache in stacks]
            results: list[list[object]] = [[] for _ in stacks]
            async with anyio.create_task_group() as tasks:
                for cache, fetcher, out in zip(stacks, fetchers, results, strict=True):
                    tasks.start_soon(_crowd, cache, "listing", fetcher, 30, out)
                # Exactly one stack takes the lock and fetches; the other two wait.
                holder = await _first_started(fetchers)
                for index, event in enumerate(waiting):
                    if index != holder:
                        await event.wait()
                fetchers[holder].open()
            assert sum(fetcher.calls for fetcher in fetchers) == 1
            for out in results:
                assert out == [{"listing": [1, 2, 3]}] * 30
            stats = [cache.statistics() for cache in stacks]
            coordinators = [s.coordinator for s in stats]
            assert all(c is not None for c in coordinators)
            # A waiter may take the lock just after the holder let it go, and then
            # find the value on its second look: a lock taken, no fetch.
            assert sum(c.acquired for c in coordinators if c) >= 1
            assert sum(c.waits for c in coordinators if c) == 2
            assert sum(c.takeovers for c in coordinators if c) == 0
            assert all(c.held == 0 and c.state == "healthy" for c in coordinators if c)
            assert sum(s.fetches for s in stats) == 1
            # The waiting stacks got the value from Redis and now hold it in memory.
            for index, cache in enumerate(stacks):
                if index != holder:
                    assert cache.statistics().layer_hits["redis"] >= 1
                    assert "listing" in cache.layers[0].get_many_nowait(["listing"])  # type: ignore[attr-defined]


async def _first_started(fetchers: list[GatedFetcher]) -> int:
    winner: list[int] = []
    async with anyio.create_task_group() as tasks:
        for index, fetcher in enumerate(fetchers):

            async def started(index: int = index, fetcher: GatedFetcher = fetcher) -> None:
                await fetcher.started.wait()
                winner.append(index)
                tasks.cancel_scope.cancel()

            tasks.start_soon(started)
    return winner[0]


async def test_lock_is_released_after_the_load(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    async with _stacks(redis_server.url, prefix, 1) as (cache,):

        async def fetch() -> int:
            assert raw.exists(f"{prefix}l:k") == 1  # held while the fetcher runs
            return 7

        assert await cache.get("k", fetch) == 7
        assert raw.exists(f"{prefix}l:k") == 0
        assert _coordinator(cache).statistics("healthy").held == 0


async def test_a_failed_holder_is_taken_over_by_one_waiter(
    redis_server: RedisServer, prefix: str
) -> None:
    with anyio.fail_after(20):
        async with _stacks(redis_server.url, prefix, 2) as (a, b):
            failing = GatedFetcher(error=RuntimeError("origin down"))
            backup = GatedFetcher("from b")
            backup.open()
            b_waiting = _signal_waiting(b)
            a_out: list[object] = []
            b_out: list[object] = []

            async def a_calls() -> None:
                with pytest.raises(RuntimeError, match="origin down"):
                    await a.get("k", failing)
                a_out.append("raised")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(a_calls)
                await failing.started.wait()
                tasks.start_soon(_crowd, b, "k", backup, 10, b_out)
                await b_waiting.wait()
                failing.open()
            assert a_out == ["raised"]
            assert b_out == ["from b"] * 10
            assert backup.calls == 1
            coordinator = b.statistics().coordinator
            assert coordinator is not None
            assert coordinator.takeovers == 1


async def test_a_dead_holders_lock_is_taken_over_once_its_lease_expires(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    # A holder that died: its lock stays until the lease runs out, nobody renews it.
    raw.set(f"{prefix}l:k", "dead-holder", px=300)
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        return "fresh"

    with anyio.fail_after(20):
        async with _stacks(redis_server.url, prefix, 3) as stacks:
            results: list[list[object]] = [[] for _ in stacks]
            async with anyio.create_task_group() as tasks:
                for cache, out in zip(stacks, results, strict=True):
                    tasks.start_soon(_crowd, cache, "k", fetch, 20, out)
            assert calls == 1
            assert all(out == ["fresh"] * 20 for out in results)
            coordinators = [cache.statistics().coordinator for cache in stacks]
            assert sum(c.takeovers for c in coordinators if c) == 1
            assert sum(c.waits for c in coordinators if c) == 3


async def test_the_holder_renews_its_lease_while_it_fetches(
    redis_server: RedisServer, prefix: str
) -> None:
    lease = 0.3
    with anyio.fail_after(20):
        async with _stacks(redis_server.url, prefix, 2, lease=lease) as (a, b):
            slow = GatedFetcher("from a")
            backup = GatedFetcher("from b")
            backup.open()
            # b reports how long it has waited: once that is several leases, a's lock
            # has survived only by being renewed.
            waited = _signal_waited(b, 4 * lease)
            out: list[object] = []
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_crowd, a, "k", slow, 1, out)
                await slow.started.wait()
                tasks.start_soon(_crowd, b, "k", backup, 1, out)
                await waited.wait()
                slow.open()
            assert out == ["from a", "from a"]
            assert backup.calls == 0
            stats = b.statistics().coordinator
            assert stats is not None
            assert stats.takeovers == 0


# -- no stale write after a change elsewhere (the Redis-side guard) ------------------------


@pytest.mark.parametrize("change", ["delete", "set", "tag", "expire", "expire tag", "clear"])
async def test_a_change_elsewhere_during_the_fetch_is_not_overwritten(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, change: str
) -> None:
    # No bus: only the lock in Redis tells the holder that its result went stale.
    url = redis_server.url
    fetcher = GatedFetcher("old")
    with anyio.fail_after(20):
        async with (
            _stack(url, prefix) as holder,
            CacheStack([MemoryLayer(), RedisLayer(url=url, prefix=prefix)]) as other,
        ):
            out: list[object] = []
            async with anyio.create_task_group() as tasks:

                async def load() -> None:
                    out.append(await holder.get("k", fetcher, tags=["t"]))

                tasks.start_soon(load)
                await fetcher.started.wait()
                if change == "delete":
                    await other.delete("k")
                elif change == "set":
                    await other.set("k", "new")
                elif change == "tag":
                    assert await other.invalidate_by_tag("t") == 0  # nothing stored yet
                elif change == "expire":
                    assert await other.expire("k") == 0
                elif change == "expire tag":
                    assert await other.expire_by_tag("t") == 0
                else:
                    await other.clear()
                fetcher.open()
            assert out == ["old"]  # the caller still gets what it asked for
            expected = "new" if change == "set" else None
            assert await other.get("k") == expected
            assert "k" not in holder.layers[0].get_many_nowait(["k"])  # type: ignore[attr-defined]
            stats = holder.statistics()
            assert stats.stale_loads == 1
            assert stats.coordinator is not None
            assert stats.coordinator.lost == 1
            assert raw.exists(f"{prefix}l:k") == 0


async def test_a_tag_invalidation_after_the_store_still_finds_the_key(
    redis_server: RedisServer, prefix: str
) -> None:
    async with _stacks(redis_server.url, prefix, 2) as (a, b):

        async def fetch() -> str:
            return "v"

        assert await a.get("k", fetch, tags=["t"]) == "v"
        assert await b.invalidate_by_tag("t") == 1
        assert await b.get("k") is None


# -- Redis unavailable ---------------------------------------------------------------------


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there


async def test_unreachable_coordinator_degrades_to_local_single_flight(
    redis_server: RedisServer, prefix: str
) -> None:
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await anyio.wait_all_tasks_blocked()  # every caller has joined
        return "v"

    coordinator = RedisSingleFlightCoordinator(_dead_url(), timeout=0.5)
    cache_ = CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)],
        single_flight_coordinator=coordinator,
        graceful_degradation=GracefulDegradation(retry_after=60),
    )
    with anyio.fail_after(20):
        async with cache_ as cache:
            out: list[object] = []
            await _crowd(cache, "k", fetch, 20, out)
            assert out == ["v"] * 20
            assert calls == 1
            stats = cache.statistics().coordinator
            assert stats is not None
            assert stats.state == "degraded"
            assert stats.acquired == 0
            assert (stats.errors, stats.skipped, stats.consecutive_failures) == (1, 0, 1)
            await cache.delete("k")
            assert await cache.get("k", fetch) == "v"  # degraded: not even tried
            stats = cache.statistics().coordinator
            assert stats is not None
            assert (stats.errors, stats.skipped) == (1, 1)
        stats = cache.statistics().coordinator
        assert stats is not None
        assert stats.state == "stopped"


async def test_unreachable_coordinator_raises_in_strict_mode(
    redis_server: RedisServer, prefix: str
) -> None:
    coordinator = RedisSingleFlightCoordinator(_dead_url(), timeout=0.5)
    cache_ = CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)],
        single_flight_coordinator=coordinator,
    )

    async def fetch() -> str:
        raise AssertionError("must not fetch without the lock in strict mode")

    with anyio.fail_after(20):
        async with cache_ as cache:
            with pytest.raises(LayerUnavailableError, match="single-flight coordinator"):
                await cache.get("k", fetch)


@pytest.mark.parametrize("graceful", [False, True])
async def test_a_waiter_that_times_out_starts_over_once_then_gives_up(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, graceful: bool
) -> None:
    raw.set(f"{prefix}l:k", "a-live-holder", px=60_000)  # never finishes within the wait
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        return "here"

    options: dict[str, Any] = {"wait_timeout": 0.1, "lease": 0.2}
    if graceful:
        options["graceful_degradation"] = GracefulDegradation(retry_after=1)
    with anyio.fail_after(20):
        async with _stacks(redis_server.url, prefix, 1, **options) as (cache,):
            if graceful:
                assert await cache.get("k", fetch) == "here"
                assert calls == 1
            else:
                with pytest.raises(LayerUnavailableError, match="did not finish within the wait"):
                    await cache.get("k", fetch)
                assert calls == 0
            stats = cache.statistics().coordinator
            assert stats is not None
            assert (stats.waits, stats.timeouts, stats.acquired) == (1, 1, 0)


async def test_one_coordinator_serves_one_stack(redis_server: RedisServer, prefix: str) -> None:
    coordinator = RedisSingleFlightCoordinator(redis_server.url)

    def layers() -> list[RedisLayer]:
        return [RedisLayer(url=redis_server.url, prefix=prefix)]

    async with CacheStack(layers(), single_flight_coordinator=coordinator):
        with pytest.raises(RuntimeError, match="already in use"):
            async with CacheStack(layers(), single_flight_coordinator=coordinator):
                pass
    async with CacheStack(layers(), single_flight_coordinator=coordinator):
        pass  # free again once the first stack exited


# -- regressions from a review: locks and tag sets left behind ---------------------------


async def test_leaving_the_stack_mid_fetch_gives_the_lock_back(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    fetcher = GatedFetcher("never")
    cache = _stack(redis_server.url, prefix)

    async def load() -> None:
        with pytest.raises(CacheClosedError):
            await cache.get("k", fetcher)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks, cache:
            tasks.start_soon(load)
            await fetcher.started.wait()
            assert raw.exists(f"{prefix}l:k") == 1
        # The stack exits first (its loads are cancelled), then the callers' task group.
    assert fetcher.cancelled
    assert raw.exists(f"{prefix}l:k") == 0  # not left to block the key for a lease


async def test_a_failed_load_leaves_its_tag_sets_as_they_were(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    async def fail() -> str:
        raise LookupError("not found")

    async with _stacks(redis_server.url, prefix, 1) as (cache,):
        for n in range(20):
            with pytest.raises(LookupError):
                await cache.get(f"missing{n}", fail, tags=["t"])
        assert raw.exists(f"{prefix}t:t") == 0  # no member left behind by the locks
        assert not raw.keys(f"{prefix}l:*")


async def test_a_load_outliving_its_lease_stays_findable_by_its_tags(
    redis_server: RedisServer, prefix: str
) -> None:
    lease = 0.3
    url = redis_server.url
    slow = GatedFetcher("old")
    backup = GatedFetcher("from w")
    backup.open()
    with anyio.fail_after(30):
        async with (
            _stack(url, prefix, lease=lease) as holder,
            _stack(url, prefix) as waiter,
            CacheStack([RedisLayer(url=url, prefix=prefix)]) as other,
        ):
            waited = _signal_waited(waiter, 4 * lease)
            out: list[object] = []
            async with anyio.create_task_group() as tasks:

                async def hold() -> None:
                    out.append(await holder.get("k", slow, tags=["t"]))

                async def wait() -> None:
                    out.append(await waiter.get("k", backup, tags=["t"]))

                tasks.start_soon(hold)
                await slow.started.wait()
                tasks.start_soon(wait)
                await waited.wait()  # several leases: the holder renewed all along
                await other.invalidate_by_tag("t")  # finds the lock, so the load is stale
                await backup.started.wait()  # the waiter took the freed lock over
                slow.open()
            assert sorted(map(str, out)) == ["from w", "old"]
            assert await other.get("k") == "from w"  # never the stale "old"
            stats = holder.statistics().coordinator
            assert stats is not None
            assert stats.lost == 1


def _signal_waited(cache: CacheStack, seconds: float) -> anyio.Event:
    """An event set once ``cache`` has waited ``seconds`` in all for a lock held
    elsewhere (the time passes in the coordinator's own back-off pauses)."""
    coordinator = _coordinator(cache)
    original = coordinator.waiting
    waited = anyio.Event()

    class CountedWait(Wait):
        __slots__ = ("total",)

        def pause(self) -> float:
            pause = super().pause()
            self.total = getattr(self, "total", 0.0) + pause
            if self.total > seconds:
                waited.set()
            return pause

    def waiting() -> Wait:
        original()  # counted as usual
        return CountedWait(anyio.current_time(), coordinator.wait_timeout, coordinator.lease)

    coordinator.waiting = waiting  # type: ignore[method-assign]
    return waited


async def test_with_two_redis_layers_a_lost_lock_writes_neither(
    redis_server: RedisServer, prefix: str
) -> None:
    url = redis_server.url
    near, far = f"{prefix}near:", f"{prefix}far:"

    def layers() -> list[RedisLayer]:
        return [RedisLayer(url=url, prefix=near, name="near"), RedisLayer(url=url, prefix=far)]

    fetcher = GatedFetcher("old")
    coordinator = RedisSingleFlightCoordinator(url)
    with anyio.fail_after(20):
        async with (
            CacheStack([MemoryLayer(), *layers()], single_flight_coordinator=coordinator) as a,
            CacheStack(layers()) as b,
        ):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(a.get, "k", fetcher)
                await fetcher.started.wait()
                await b.delete("k")
                fetcher.open()
            assert await b.get_many(["k"]) == {}  # neither Redis layer got the stale value


async def test_a_coordinator_on_another_database_is_refused(
    redis_server: RedisServer, prefix: str
) -> None:
    coordinator = RedisSingleFlightCoordinator(redis_server.url + "/1")
    stack = CacheStack(
        [RedisLayer(url=redis_server.url, prefix=prefix)], single_flight_coordinator=coordinator
    )
    with pytest.raises(LayerUnavailableError, match="same Redis server and database"):
        async with stack:
            pass
