"""One owner (DESIGN §2) against a real redis-server, on asyncio and trio.

A stack with a memory layer, a Redis layer, the bus and the coordinator, called from
another thread (on asyncio, on trio, or with no loop at all) and from another loop nested
in the owner's thread: every call raises ``RuntimeError`` at once, and the owner sees no
change: the same memory, no command reached the server, the same connections, and its
``async with`` exits normally. No sleeps: the test awaits the foreign thread's answers,
then asks the server; the deadlines only stop a hang.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
import redis

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache.testing import RedisServer

from ..foreign import FOREIGN_CALLS, call_foreign, refusals

pytestmark = pytest.mark.anyio

ALL_REFUSED = {name: "refused" for name, _ in FOREIGN_CALLS}
EXPECTED = {"hit": "from memory", "remote": "from redis"}


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A connection of the test's own, to ask the server what it was sent."""
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


def _server_seen(raw: redis.Redis) -> tuple[dict[str, int], set[str]]:
    """The server's calls per command (but the INFO and CLIENT this asks with), and the
    ids of its connected clients."""
    calls = {
        command: stats["calls"]
        for command, stats in raw.info("commandstats").items()
        if not command.startswith(("cmdstat_info", "cmdstat_client"))
    }
    return calls, {client["id"] for client in raw.client_list()}


def _stack(url: str, prefix: str, memory: MemoryLayer) -> CacheStack:
    return CacheStack(
        [memory, RedisLayer(url=url, prefix=prefix)],
        invalidation_bus=RedisInvalidationBus(url, channel=f"{prefix}bus", keepalive=3600),
        single_flight_coordinator=RedisSingleFlightCoordinator(url=url),
    )


async def _fill(cache: CacheStack, memory: MemoryLayer) -> None:
    await cache.set("remote", EXPECTED["remote"], tags=["t"])
    memory.clear_nowait()
    await cache.set("hit", EXPECTED["hit"], tags=["t"])


@pytest.mark.parametrize("loop", ["asyncio", "trio", "none"])
async def test_calls_from_another_thread_never_reach_redis(
    redis_server: RedisServer, prefix: str, raw: redis.Redis, loop: str
) -> None:
    memory = MemoryLayer()
    with anyio.fail_after(60):
        async with _stack(redis_server.url, prefix, memory) as cache:
            await _fill(cache, memory)
            before, server_before = cache.statistics(), _server_seen(raw)
            outcomes = await anyio.to_thread.run_sync(
                call_foreign, cache, loop, abandon_on_cancel=True
            )
            assert refusals(outcomes) == ALL_REFUSED
            assert _server_seen(raw) == server_before  # nothing sent, no reconnect
            assert await anyio.to_thread.run_sync(cache.statistics) == before
            assert cache.statistics() == before
            memory.clear_nowait()  # the next read goes to Redis, on the owner's connection
            assert await cache.get_many(["hit", "remote", "new", "missing"]) == EXPECTED
            assert cache.statistics().layers[1].errors == 0
    assert cache.state == "closed"


async def test_a_loop_nested_in_the_owner_thread_never_reaches_redis(
    redis_server: RedisServer, prefix: str, raw: redis.Redis, anyio_backend_name: str
) -> None:
    """Only a memory hit is answered to a loop nested in the owner's thread (see the
    unit test); whatever needs Redis is refused before a byte is sent."""
    memory = MemoryLayer()
    nested = "trio" if anyio_backend_name == "asyncio" else "asyncio"
    with anyio.fail_after(60):
        async with _stack(redis_server.url, prefix, memory) as cache:
            await _fill(cache, memory)
            server_before = _server_seen(raw)
            outcomes = call_foreign(cache, nested)
            assert refusals(outcomes) == {
                **ALL_REFUSED,
                "get of a memory hit": repr(EXPECTED["hit"]),
            }
            assert _server_seen(raw) == server_before
            memory.clear_nowait()
            assert await cache.get_many(["hit", "remote", "new", "missing"]) == EXPECTED
            assert cache.statistics().layers[1].errors == 0
    assert cache.state == "closed"
