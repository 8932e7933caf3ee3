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


async def test_requests_behind_a_large_transfer_wait_for_it_and_do_not_fail(
    proxy: FaultProxy, prefix: str
) -> None:
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
