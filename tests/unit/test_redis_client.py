"""``RedisLayer(client=...)``: an existing redis.asyncio-compatible client.

redis-py clients run on asyncio only, so the contract runs on asyncio here (the
``anyio_backend`` fixture is narrowed below); on trio the layer must refuse to start
with an error that points to ``url=``, which the last tests check on both backends.
"""

from __future__ import annotations

import uuid

import anyio
import fakeredis
import pytest

from layercache import CacheStack, LayerUnavailableError, MemoryLayer, RedisLayer
from layercache.testing import LayerContract, invalidations_received

pytestmark = pytest.mark.anyio


class TestClientLayerContract(LayerContract):
    follows_clock = False

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    def make_layer(self, *, ttl: float | None = None, max_size: int = 1000) -> RedisLayer:
        return RedisLayer(
            client=fakeredis.FakeAsyncRedis(), ttl=ttl, prefix=f"client:{uuid.uuid4().hex}:"
        )


async def test_client_layer_behind_memory(anyio_backend: str) -> None:
    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="url="):
            async with CacheStack([RedisLayer(client=fakeredis.FakeAsyncRedis())]):
                pass
        return
    client = fakeredis.FakeAsyncRedis()
    memory = MemoryLayer()
    async with CacheStack([memory, RedisLayer(client=client, prefix="p:")]) as cache:
        await cache.set("k", {"v": 1}, tags=["t"])
        memory.clear_nowait()
        assert await cache.get("k") == {"v": 1}
        assert memory.get_many_nowait(["k"])["k"].tags == frozenset({"t"})
        await client.set("p:v:junk", b"\x00garbage")
        assert await cache.get("junk", default="miss") == "miss"
        assert await client.exists("p:v:junk") == 0
        assert await cache.invalidate_by_tag("t") == 1
        await cache.clear()
        assert await client.keys("p:*") == []


async def test_client_that_decodes_responses_is_refused(anyio_backend: str) -> None:
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    # On trio the backend check comes first; either way the stack does not start.
    expected = TypeError if anyio_backend == "trio" else LayerUnavailableError
    match = "url=" if anyio_backend == "trio" else "decode_responses=False"
    with pytest.raises(expected, match=match):
        async with CacheStack([RedisLayer(client=client)]):
            pass


@pytest.mark.parametrize("shared", [False, True], ids=["own clients", "one client"])
async def test_bus_over_clients(anyio_backend: str, shared: bool) -> None:
    """With one client for the layer and the bus, the bus's messages go with the change
    (one pipeline, so Redis runs them after it); with two, on the bus's own client."""
    from layercache import RedisInvalidationBus

    server = fakeredis.FakeServer()

    def stack() -> CacheStack:
        client = fakeredis.FakeAsyncRedis(server=server)
        bus_client = client if shared else fakeredis.FakeAsyncRedis(server=server)
        return CacheStack(
            [MemoryLayer(), RedisLayer(client=client)],
            invalidation_bus=RedisInvalidationBus(client=bus_client, secret="s3cret-s3cret"),
        )

    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="url="):
            async with stack():
                pass
        return
    async with stack() as a, stack() as b:
        await a.set("k", 1)
        await invalidations_received(b, 1)
        assert await b.get("k") == 1  # read from Redis, now in b's L1
        await a.set("k", 2)
        await invalidations_received(b, 2)
        await anyio.wait_all_tasks_blocked()
        assert await b.get("k") == 2
        assert b.statistics().invalidations_received == 2
        stats = a.statistics()
        assert (stats.invalidations_sent, stats.invalidations_carried) == (2, 2 if shared else 0)


def test_bus_needs_exactly_one_of_url_and_client() -> None:
    from layercache import RedisInvalidationBus

    with pytest.raises(TypeError, match="exactly one"):
        RedisInvalidationBus()
    with pytest.raises(TypeError, match="exactly one"):
        RedisInvalidationBus("redis://localhost", client=fakeredis.FakeAsyncRedis())
