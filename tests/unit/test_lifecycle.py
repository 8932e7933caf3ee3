"""The stack's lifetime: nothing before ``async with``, nothing after, nothing left over."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from layercache import CacheClosedError, CacheStack, MemoryLayer
from layercache.testing import FakeClock

pytestmark = pytest.mark.anyio

CALLS: list[tuple[str, Callable[[CacheStack], Awaitable[Any]]]] = [
    ("get", lambda cache: cache.get("k")),
    ("get with fetcher", lambda cache: cache.get("k", _fetch)),
    ("set", lambda cache: cache.set("k", 1)),
    ("delete", lambda cache: cache.delete("k")),
    ("get_many", lambda cache: cache.get_many(["k"])),
    ("set_many", lambda cache: cache.set_many({"k": 1})),
    ("delete_many", lambda cache: cache.delete_many(["k"])),
    ("invalidate_by_tag", lambda cache: cache.invalidate_by_tag("t")),
    ("clear", lambda cache: cache.clear()),
]


async def _fetch() -> int:
    return 1


def test_construction_needs_no_event_loop() -> None:
    stack = CacheStack([MemoryLayer()])
    assert stack.state == "new"
    assert stack.statistics().hits == 0
    assert "new" in repr(stack)


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
async def test_calls_before_entering_raise_closed(
    name: str, call: Callable[[CacheStack], Awaitable[Any]]
) -> None:
    with pytest.raises(CacheClosedError, match="not open"):
        await call(CacheStack([MemoryLayer()]))


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
async def test_calls_after_exit_raise_closed(
    name: str, call: Callable[[CacheStack], Awaitable[Any]]
) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
    assert cache.state == "closed"
    with pytest.raises(CacheClosedError, match="closed"):
        await call(cache)


async def test_entering_twice_raises_runtime_error() -> None:
    stack = CacheStack([MemoryLayer()])
    async with stack:
        with pytest.raises(RuntimeError, match="only once"):
            await stack.__aenter__()
    with pytest.raises(RuntimeError, match="only once"):
        async with stack:
            pass


async def test_no_task_outlives_the_block() -> None:
    before = len(anyio.get_running_tasks())
    async with CacheStack([MemoryLayer(), MemoryLayer(name="second")]) as cache:
        assert len(anyio.get_running_tasks()) > before
        await cache.get("k", _fetch)
    assert len(anyio.get_running_tasks()) == before


async def test_exception_in_the_block_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="from the body"):
        async with CacheStack([MemoryLayer()]):
            raise KeyError("from the body")


async def test_outer_cancellation_exits_cleanly() -> None:
    with anyio.CancelScope() as scope:
        async with CacheStack([MemoryLayer()]) as cache:
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert cache.state == "closed"


async def test_a_layer_serves_one_stack_at_a_time() -> None:
    layer = MemoryLayer()
    async with CacheStack([layer]) as first:
        await first.set("k", 1)
        with pytest.raises(RuntimeError, match="already in use"):
            async with CacheStack([layer]):
                pass
        assert await first.get("k") == 1  # the failed second stack did not disturb it
    async with CacheStack([layer]) as second:
        # Entries do not survive their stack: their deadlines were on its clock.
        assert await second.get("k", default="absent") == "absent"


async def test_failed_start_detaches_layers() -> None:
    busy = MemoryLayer(name="busy")
    free = MemoryLayer(name="free")
    async with CacheStack([busy]):
        with pytest.raises(RuntimeError):
            async with CacheStack([free, busy]):
                pass
    async with CacheStack([free]) as cache:
        await cache.set("k", 1)


async def test_default_clock_is_the_loop_clock() -> None:
    async with CacheStack([MemoryLayer(ttl=3600)]) as cache:
        await cache.set("k", 1)
        hits = await cache.layers[0].get_many(["k"])
        remaining = hits["k"].remaining(cache.layers[0].clock())
        assert remaining is not None
        assert 3599 < remaining <= 3600


async def test_repr_shows_live_state(clock: FakeClock) -> None:
    layer = MemoryLayer(max_size=5)
    async with CacheStack([layer], clock=clock) as cache:
        await cache.set("k", 1, tags=["t"])
        assert "open" in repr(cache)
        assert "loads=0" in repr(cache)
        assert "size=1/5" in repr(layer)
        assert "tags=1" in repr(layer)


async def test_statistics_snapshot_is_frozen() -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        stats = cache.statistics()
        with pytest.raises(AttributeError):
            stats.hits = 5  # type: ignore[misc]
        with pytest.raises(TypeError):
            stats.layer_hits["memory"] = 5  # type: ignore[index]
        await cache.set("k", 1)
        await cache.get("k")
        assert stats.hits == 0
        assert cache.statistics().hits == 1
