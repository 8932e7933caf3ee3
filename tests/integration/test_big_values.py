"""A large value moving slowly is not a dead server: the layer's timeout bounds waiting
for Redis, not a transfer whose bytes keep flowing (DESIGN §2 "Big values").

The values go through a :class:`~layercache.testing.FaultProxy` passing everything
through: relaying 100 MB takes it well over the layer's 0.4 s timeout, while no single
wait (for room in the socket, for Redis to run the write, for the next bytes) does.
"""

from __future__ import annotations

import anyio
import pytest

from layercache import CacheStack, MemoryLayer, RedisLayer
from layercache.testing import FaultProxy

pytestmark = pytest.mark.anyio

SIZE = 100_000_000
TIMEOUT = 0.4


def _layers(proxy: FaultProxy, prefix: str) -> tuple[MemoryLayer, RedisLayer]:
    """Memory in front of Redis through the proxy, with room for the large value."""
    layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=TIMEOUT, max_value_size=2 * SIZE)
    return MemoryLayer(), layer


async def test_a_large_value_that_keeps_moving_does_not_time_out(
    proxy: FaultProxy, prefix: str
) -> None:
    memory, layer = _layers(proxy, prefix)
    with anyio.fail_after(60):
        async with CacheStack([memory, layer]) as cache:
            value = "x" * SIZE
            await cache.set("big", value)  # out through the proxy: longer than TIMEOUT
            memory.clear_nowait()
            assert await cache.get("big") == value  # and back in
            await cache.set("small", 1)  # the connection is still the same, and healthy
            assert layer.statistics().errors == 0
            await cache.delete("big")


async def test_requests_during_a_large_transfer_do_not_fail(proxy: FaultProxy, prefix: str) -> None:
    memory, layer = _layers(proxy, prefix)
    with anyio.fail_after(60):
        async with CacheStack([memory, layer]) as cache:
            value = "x" * SIZE
            await cache.set("big", value)
            await cache.set_many({f"small:{n}": n for n in range(20)})
            memory.clear_nowait()
            got: dict[str, object] = {}

            async def read(key: str) -> None:
                got[key] = await cache.get(key)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read, "big")  # goes first, alone
                await anyio.wait_all_tasks_blocked()
                for n in range(20):  # queued behind it, longer than TIMEOUT
                    tasks.start_soon(read, f"small:{n}")
            assert got == {"big": value, **{f"small:{n}": n for n in range(20)}}
            assert layer.statistics().errors == 0
            await cache.delete("big")


async def _read_small_keys(cache: CacheStack) -> dict[str, object]:
    """The 20 small keys, read concurrently (a bound, not a timing: they must not wait
    for the large transfer held by the proxy)."""
    got: dict[str, object] = {}

    async def read(key: str) -> None:
        got[key] = await cache.get(key)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as small:
            for n in range(20):
                small.start_soon(read, f"small:{n}")
    return got


async def _wait_for(done: anyio.Event) -> None:
    with anyio.fail_after(60):
        await done.wait()


async def test_a_large_read_stuck_midway_does_not_hold_up_other_reads(
    proxy: FaultProxy, prefix: str
) -> None:
    """Replies on a connection come in order: the small reads are answered on the
    layer's spare connection while the large one is held halfway by the proxy."""
    memory = MemoryLayer()
    layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=30.0, max_value_size=2 * SIZE)
    async with CacheStack([memory, layer]) as cache:
        value = "x" * SIZE
        await cache.set("big", value)
        await cache.set_many({f"small:{n}": n for n in range(20)})
        memory.clear_nowait()
        got: dict[str, object] = {}
        big_done = anyio.Event()

        async def read_big() -> None:
            got["big"] = await cache.get("big")
            big_done.set()

        proxy.choke(after=4 * 1024 * 1024)  # the big reply stops after 4 MB
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_big)
            await anyio.wait_all_tasks_blocked()
            got.update(await _read_small_keys(cache))
            assert got == {f"small:{n}": n for n in range(20)}  # the big one is still held
            proxy.pass_through()
            await _wait_for(big_done)
        assert got["big"] == value
        assert layer.statistics().errors == 0
        await cache.delete("big")


async def test_a_large_write_stuck_midway_does_not_hold_up_reads(
    proxy: FaultProxy, prefix: str
) -> None:
    memory = MemoryLayer()
    layer = RedisLayer(url=proxy.url, prefix=prefix, timeout=30.0, max_value_size=2 * SIZE)
    async with CacheStack([memory, layer]) as cache:
        await cache.set_many({f"small:{n}": n for n in range(20)})
        memory.clear_nowait()
        got: dict[str, object] = {}
        written = anyio.Event()

        async def write_big() -> None:
            await cache.set("big", "x" * SIZE)
            written.set()

        proxy.choke(after=4 * 1024 * 1024)  # the big write stops after 4 MB
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write_big)
            await anyio.wait_all_tasks_blocked()  # encoded, and part-way out
            got.update(await _read_small_keys(cache))
            assert got == {f"small:{n}": n for n in range(20)}
            assert not written.is_set()
            proxy.pass_through()
            await _wait_for(written)
        memory.clear_nowait()
        assert await cache.get("big") == "x" * SIZE
        assert layer.statistics().errors == 0
        await cache.delete("big")
