"""Fault injection against a real redis-server (issue 4): the stack survives Redis failing.

Faults: the server killed (SIGKILL) and restarted on its port; a loopback proxy
(:class:`~layercache.testing.FaultProxy`) that black-holes traffic, adds 500 ms of
latency or resets connections; the server answering errors (``maxmemory`` reached with
``noeviction``); the layer's actor crashing. Each runs on asyncio and trio.

Rules: every test body is bounded by ``anyio.fail_after``; degradation windows and the
breaker run on a :class:`~layercache.testing.FakeClock` the test advances, while Redis
request timeouts are real (the layer's ``timeout``); waiting is on events, on the
transport's ``wait_connected`` or on the proxy's traffic notification, never on sleeps
for things to settle; no timing assertions (a black-holed call's cost is bounded by the layer's
timeout, which the enclosing ``fail_after`` catches if it is not).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import pytest
import redis
from anyio.abc import TaskStatus

from layercache import (
    CacheStack,
    CircuitBreaker,
    GracefulDegradation,
    LayerStatistics,
    LayerUnavailableError,
    MemoryLayer,
    RedisLayer,
)
from layercache._redis._transport import Transport
from layercache.testing import FakeClock, FaultProxy, RedisServer

pytestmark = pytest.mark.anyio

BOUND = 30.0
"""Seconds any one test may take, whatever Redis does."""
TIMEOUT = 0.2
"""The Redis layer's request timeout where a fault must make requests fail."""
RETRY_AFTER = 10.0
"""Seconds between two looks at a condition another task or thread will make true."""


def graceful() -> GracefulDegradation:
    return GracefulDegradation(retry_after=RETRY_AFTER)


def returning(value: object) -> Callable[[], Awaitable[object]]:
    async def fetch() -> object:
        return value

    return fetch


def redis_statistics(cache: CacheStack) -> LayerStatistics:
    (stats,) = (layer for layer in cache.statistics().layers if layer.name == "redis")
    return stats


async def wait_connected(layer: RedisLayer) -> None:
    assert layer._lanes is not None
    transport = layer._lanes.main
    assert isinstance(transport, Transport)
    await transport.wait_connected()


async def assert_round_trip(cache: CacheStack, layer: RedisLayer, key: str) -> None:
    """A ``set`` through the stack reaches Redis, and the layer reads it back."""
    await cache.set(key, f"stored:{key}")
    found = await layer.get_many([key])
    assert key in found
    assert found[key].value == f"stored:{key}"


def inject(proxy: FaultProxy, fault: str) -> None:
    if fault == "black-hole":
        proxy.black_hole()
    else:
        proxy.delay(0.5)


FAULTS = pytest.mark.parametrize("fault", ["black-hole", "latency-500ms"])


# -- the server dies and comes back ----------------------------------------------------


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct-keys", "one-key"])
async def test_kill_during_a_thousand_gets_then_restart(
    own_redis_server: RedisServer, clock: FakeClock, prefix: str, distinct: bool
) -> None:
    with anyio.fail_after(BOUND):
        layer = RedisLayer(url=own_redis_server.url, prefix=prefix, timeout=TIMEOUT)
        async with CacheStack(
            [MemoryLayer(), layer], graceful_degradation=graceful(), clock=clock
        ) as cache:
            await cache.set("warm", "up")  # the connection is up
            gate = anyio.Event()
            results: dict[int, object] = {}

            async def read(n: int) -> None:
                key = f"k{n}" if distinct else "hot"

                async def fetch() -> str:
                    await gate.wait()
                    return f"fetched:{key}"

                results[n] = await cache.get(key, fetch)

            async with anyio.create_task_group() as tasks:
                for n in range(1000):
                    tasks.start_soon(read, n)
                await anyio.wait_all_tasks_blocked()  # reads in flight or fetches waiting
                own_redis_server.kill()
                gate.set()
            # Any caller's exception would have left the task group above.
            assert results == {n: f"fetched:{f'k{n}' if distinct else 'hot'}" for n in range(1000)}
            stats = redis_statistics(cache)
            assert stats.state == "degraded"
            assert stats.errors >= 1
            assert stats.dropped >= 1  # the fetched values could not be written

            # While degraded the layer is not even tried.
            assert await cache.get("during", returning("fallback")) == "fallback"
            assert redis_statistics(cache).skipped > stats.skipped
            assert redis_statistics(cache).errors == stats.errors

            own_redis_server.start()  # same port, empty
            clock.advance(RETRY_AFTER)
            await wait_connected(layer)
            await assert_round_trip(cache, layer, "after-restart")
            assert redis_statistics(cache).state == "healthy"


# -- black hole and latency through the proxy -------------------------------------------


@FAULTS
async def test_graceful_silent_redis_costs_one_timeout_then_is_skipped(
    proxy: FaultProxy, clock: FakeClock, prefix: str, fault: str
) -> None:
    with anyio.fail_after(BOUND):
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=TIMEOUT)
        async with CacheStack(
            [MemoryLayer(), layer], graceful_degradation=graceful(), clock=clock
        ) as cache:
            await cache.set("warm", "up")
            inject(proxy, fault)
            assert await cache.get("warm") == "up"  # an L1 hit never touches Redis
            assert await cache.get("cold", returning("fetched")) == "fetched"
            first = redis_statistics(cache)
            assert first.state == "degraded"
            assert first.errors >= 1

            # Degraded: nothing is sent, so nothing waits and nothing fails.
            assert await cache.get("colder", returning("fetched too")) == "fetched too"
            await cache.set("written", 1)
            await cache.delete("warm")
            then = redis_statistics(cache)
            assert then.errors == first.errors
            assert then.skipped >= first.skipped + 3
            assert then.dropped >= first.dropped + 2  # the set and the delete

            proxy.pass_through()
            clock.advance(RETRY_AFTER)
            await wait_connected(layer)
            await assert_round_trip(cache, layer, "healed")
            assert redis_statistics(cache).state == "healthy"


@FAULTS
async def test_strict_silent_redis_raises(
    proxy: FaultProxy, clock: FakeClock, prefix: str, fault: str
) -> None:
    with anyio.fail_after(BOUND):
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=TIMEOUT)
        async with CacheStack([MemoryLayer(), layer], clock=clock) as cache:
            await cache.set("warm", "up")
            inject(proxy, fault)
            assert await cache.get("warm") == "up"  # an L1 hit never touches Redis
            with pytest.raises(LayerUnavailableError) as raised:
                await cache.get("cold", returning("fetched"))
            assert raised.value.__cause__ is not None
            with pytest.raises(LayerUnavailableError) as raised:
                await cache.set("k", 1)
            assert raised.value.__cause__ is not None
            with pytest.raises(LayerUnavailableError) as raised:
                await cache.delete("k")
            assert raised.value.__cause__ is not None
            assert redis_statistics(cache).errors >= 3


async def test_latency_within_the_timeout_is_only_slow(
    proxy: FaultProxy, clock: FakeClock, prefix: str
) -> None:
    with anyio.fail_after(BOUND):
        memory = MemoryLayer()
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=2.0)
        async with CacheStack([memory, layer], clock=clock) as cache:  # strict: no masking
            await cache.set("warm", "up")
            proxy.delay(0.5)
            await cache.set("slow", "but fine")
            memory.clear_nowait()
            assert await cache.get("slow") == "but fine"
            stats = redis_statistics(cache)
            assert (stats.state, stats.errors, stats.hits) == ("healthy", 0, 1)


async def test_a_lone_reader_cancelled_mid_read_leaves_its_reply_to_the_others(
    proxy: FaultProxy, clock: FakeClock, prefix: str
) -> None:
    """A lone read's caller reads its reply itself (trio); cancelled while it waits, it
    hands the reading back, and the reply still reaches the load's other callers."""
    with anyio.fail_after(BOUND):
        memory = MemoryLayer()
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=5.0)
        async with CacheStack([memory, layer], clock=clock) as cache:
            await cache.set_many({"k": "v", "next": "w"})
            memory.clear_nowait()
            proxy.delay(0.5)
            seen, batches = proxy.bytes_from_clients, layer._batches
            first, second = anyio.CancelScope(), []

            async def read_first() -> None:
                with first:
                    await cache.get("k")

            async def read_second() -> None:
                second.append(await cache.get("k"))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read_first)
                sent = await anyio.to_thread.run_sync(proxy.wait_for_client_bytes, seen, 20.0)
                assert sent
                tasks.start_soon(read_second)
                await anyio.wait_all_tasks_blocked()
                first.cancel()
            assert first.cancelled_caught
            assert second == ["v"]
            assert layer._batches == batches + 1  # the one read, not read again
            proxy.pass_through()
            memory.clear_nowait()
            assert await cache.get_many(["k", "next"]) == {"k": "v", "next": "w"}
            assert redis_statistics(cache).errors == 0


# -- Redis answers errors ----------------------------------------------------------------


def run_out_of_memory(server: RedisServer) -> None:
    """Make every write fail with OOM: a 1-byte ``maxmemory`` and no eviction."""
    with redis.Redis.from_url(server.url) as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)


async def test_strict_error_replies_raise_with_the_message(
    own_redis_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    with anyio.fail_after(BOUND):
        memory = MemoryLayer()
        layer = RedisLayer(url=own_redis_server.url, prefix=prefix, timeout=TIMEOUT)
        async with CacheStack([memory, layer], clock=clock) as cache:
            await cache.set("before", "stored")
            run_out_of_memory(own_redis_server)
            with pytest.raises(LayerUnavailableError, match="OOM") as raised:
                await cache.set("after", "refused")
            assert raised.value.__cause__ is not None
            memory.clear_nowait()
            assert await cache.get("before") == "stored"  # reads still work


async def test_graceful_error_replies_drop_writes(
    own_redis_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    with anyio.fail_after(BOUND):
        memory = MemoryLayer()
        layer = RedisLayer(url=own_redis_server.url, prefix=prefix, timeout=TIMEOUT)
        async with CacheStack(
            [memory, layer], graceful_degradation=graceful(), clock=clock
        ) as cache:
            await cache.set("before", "stored")
            run_out_of_memory(own_redis_server)
            dropped = redis_statistics(cache).dropped
            await cache.set("after", "dropped")
            assert redis_statistics(cache).dropped > dropped
            assert await cache.get("cold", returning("fetched")) == "fetched"
            # Reads still work once the layer is tried again.
            clock.advance(RETRY_AFTER)
            memory.clear_nowait()
            assert await cache.get("before") == "stored"
            assert redis_statistics(cache).state == "healthy"


# -- connection reset in the middle of a batch ---------------------------------------------


async def reset_during_reads(
    proxy: FaultProxy, read: Callable[[int], Coroutine[Any, Any, None]]
) -> None:
    """Run ``read(0..199)`` and reset the connection while their batch is in flight.

    The proxy holds what it forwards for 500 ms, so once it has read the first batch of
    requests, the replies cannot have come back: that is when the connection is reset.
    """
    proxy.delay(0.5)
    seen = proxy.bytes_from_clients
    async with anyio.create_task_group() as tasks:
        for n in range(200):
            tasks.start_soon(read, n)
        on_the_wire = await anyio.to_thread.run_sync(proxy.wait_for_client_bytes, seen, 20.0)
        assert on_the_wire
        proxy.reset_connections()
        proxy.pass_through()


async def test_graceful_reset_mid_batch(proxy: FaultProxy, clock: FakeClock, prefix: str) -> None:
    with anyio.fail_after(BOUND):
        memory = MemoryLayer()
        # A timeout longer than the delay: what fails the batch is the reset.
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=2.0)
        async with CacheStack(
            [memory, layer], graceful_degradation=graceful(), clock=clock
        ) as cache:
            await cache.set_many({f"k{n}": f"v{n}" for n in range(200)})
            memory.clear_nowait()
            results: dict[int, object] = {}

            async def read(n: int) -> None:
                # Redis and the fetcher both give k<n> the value v<n>: a cross-wired
                # reply would show.
                results[n] = await cache.get(f"k{n}", returning(f"v{n}"))

            await reset_during_reads(proxy, read)
            assert results == {n: f"v{n}" for n in range(200)}
            stats = redis_statistics(cache)
            assert stats.state == "degraded"
            assert stats.errors >= 1

            clock.advance(RETRY_AFTER)
            await wait_connected(layer)
            await assert_round_trip(cache, layer, "after-reset")
            assert redis_statistics(cache).state == "healthy"


async def test_strict_reset_mid_batch_fails_calls_but_never_misanswers(
    proxy: FaultProxy, clock: FakeClock, prefix: str
) -> None:
    with anyio.fail_after(BOUND):
        memory = MemoryLayer()
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=2.0)
        async with CacheStack([memory, layer], clock=clock) as cache:
            await cache.set_many({f"k{n}": f"v{n}" for n in range(200)})
            memory.clear_nowait()
            outcomes: dict[int, object] = {}

            async def read(n: int) -> None:
                try:
                    outcomes[n] = await cache.get(f"k{n}")
                except LayerUnavailableError:
                    outcomes[n] = LayerUnavailableError

            await reset_during_reads(proxy, read)
            assert set(outcomes) == set(range(200))
            wrong = {
                n: got for n, got in outcomes.items() if got not in (f"v{n}", LayerUnavailableError)
            }
            assert wrong == {}
            assert LayerUnavailableError in outcomes.values()

            await wait_connected(layer)
            memory.clear_nowait()
            assert await cache.get_many([f"k{n}" for n in range(200)]) == {
                f"k{n}": f"v{n}" for n in range(200)
            }


# -- the circuit breaker -------------------------------------------------------------------


async def test_breaker_opens_probes_once_and_closes(
    proxy: FaultProxy, clock: FakeClock, prefix: str
) -> None:
    with anyio.fail_after(BOUND):
        layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=TIMEOUT)
        breaker = CircuitBreaker(threshold=3, reset_after=30.0)
        async with CacheStack(
            [MemoryLayer(), layer], circuit_breaker=breaker, clock=clock
        ) as cache:
            await cache.set("warm", "up")
            proxy.black_hole()
            for n in range(3):
                with pytest.raises(LayerUnavailableError):
                    await cache.get(f"tried{n}")
            opened = redis_statistics(cache)
            assert (opened.state, opened.errors, opened.consecutive_failures) == ("open", 3, 3)

            # Open: refused at once, without a request.
            with pytest.raises(LayerUnavailableError) as raised:
                await cache.get("refused")
            assert raised.value.__cause__ is not None
            refused = redis_statistics(cache)
            assert (refused.state, refused.errors) == ("open", 3)
            assert refused.skipped == opened.skipped + 1

            # Half-open: of five concurrent writes, one is the probe; it fails, so the
            # breaker opens again. (Writes, since concurrent reads share one request.)
            clock.advance(30.0)
            assert redis_statistics(cache).state == "half-open"
            failures: list[LayerUnavailableError] = []

            async def attempt(n: int) -> None:
                with pytest.raises(LayerUnavailableError) as raised:
                    await cache.set(f"probe{n}", n)
                failures.append(raised.value)

            async with anyio.create_task_group() as tasks:
                for n in range(5):
                    tasks.start_soon(attempt, n)
            assert len(failures) == 5
            probed = redis_statistics(cache)
            assert (probed.state, probed.errors) == ("open", 4)
            assert probed.skipped == refused.skipped + 4

            # Redis is back: the next probe succeeds and closes the breaker.
            proxy.pass_through()
            await wait_connected(layer)
            clock.advance(30.0)
            assert redis_statistics(cache).state == "half-open"
            await assert_round_trip(cache, layer, "closed-again")
            closed = redis_statistics(cache)
            assert (closed.state, closed.consecutive_failures) == ("healthy", 0)
            assert await cache.get("closed-again") == "stored:closed-again"


# -- the layer's actor crashes ---------------------------------------------------------------


async def test_crashed_layer_actor_is_restarted(
    redis_server: RedisServer,
    clock: FakeClock,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="layercache")
    with anyio.fail_after(BOUND):
        layer = RedisLayer(url=redis_server.url, prefix=prefix, timeout=TIMEOUT)
        restarted = anyio.Event()
        starts = 0
        run = layer.run

        class CountStarts(TaskStatus[None]):
            def __init__(self, outer: TaskStatus[None]) -> None:
                self.outer = outer

            def started(self, value: None = None) -> None:
                nonlocal starts
                starts += 1
                self.outer.started(value)  # the supervisor marks the layer healthy here
                if starts == 2:
                    restarted.set()

        async def counted_run(*, task_status: TaskStatus[None]) -> None:
            await run(task_status=CountStarts(task_status))

        monkeypatch.setattr(layer, "run", counted_run)
        async with CacheStack(
            [MemoryLayer(), layer], graceful_degradation=graceful(), clock=clock
        ) as cache:
            await cache.set("before", "the crash")
            dispatch = layer._dispatch
            crashes = 0

            async def crash_once(*args: Any) -> None:
                nonlocal crashes
                if crashes == 0:
                    crashes += 1
                    raise RuntimeError("injected crash in the Redis layer actor")
                await dispatch(*args)

            async def never_now(request: Any) -> bool:
                return False  # every request through the actor, which is what crashes

            monkeypatch.setattr(layer, "_dispatch", crash_once)
            monkeypatch.setattr(layer, "_send_now", never_now)
            assert await cache.get("cold", returning("fetched")) == "fetched"
            assert crashes == 1
            assert await cache.get("before") == "the crash"  # the stack lives on
            await restarted.wait()
            # Meanwhile it counted as restarting (one log line per state change).
            assert any(
                record.name == "layercache.health" and "is restarting" in record.getMessage()
                for record in caplog.records
            )
            assert redis_statistics(cache).state != "restarting"
            clock.advance(RETRY_AFTER)
            await wait_connected(layer)
            await assert_round_trip(cache, layer, "after-the-crash")
            assert redis_statistics(cache).state == "healthy"
