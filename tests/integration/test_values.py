"""One value whichever layer answers, and values the Redis layer refuses, against a real
redis-server, on asyncio and trio.

A memory layer in front of the Redis layer holds what the serializer gives back, so a
``get`` answered by memory, by Redis or by a fetch returns equal values of the same
types. Values JSON would change silently, or over the layer's ``max_value_size``, fail
before any layer is written, with the JSON serializer on orjson and on the standard
library alike.

Rules: every test uses its own key prefix on the shared server; no sleeps, no timing
assertions.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest

from layercache import (
    CacheStack,
    JsonSerializer,
    MemoryLayer,
    RedisLayer,
    SerializationError,
    Serializer,
)

from ..helpers import same, stdlib_json

pytestmark = pytest.mark.anyio

JSON_SERIALIZERS = pytest.mark.parametrize(
    "serializer", [JsonSerializer(), stdlib_json()], ids=["orjson", "stdlib"]
)
VALUE = {"pair": (1, (2, "x")), "price": 1.5, "name": "ünï", "none": None, "big": 2**63}
READ_BACK = {"pair": [1, [2, "x"]], "price": 1.5, "name": "ünï", "none": None, "big": 2**63}


async def _from_redis_alone(url: str, prefix: str, key: str, serializer: Any = None) -> Any:
    """What another instance without a memory copy reads for ``key``."""
    async with CacheStack([RedisLayer(url=url, prefix=prefix, serializer=serializer)]) as other:
        return await other.get(key)


@JSON_SERIALIZERS
async def test_memory_and_redis_answer_the_same_value(
    redis_server: Any, prefix: str, serializer: Serializer
) -> None:
    memory = MemoryLayer()
    layer = RedisLayer(url=redis_server.url, prefix=prefix, serializer=serializer)
    async with CacheStack([memory, layer]) as cache:
        await cache.set("k", VALUE)
        await cache.set_many({"a": (1,), "b": {"t": ()}})
        from_memory = await cache.get("k")
        assert same(from_memory, READ_BACK)
        assert same(await cache.get_many(["a", "b"]), {"a": [1], "b": {"t": []}})
        assert cache.statistics().layer_hits["redis"] == 0
    assert same(await _from_redis_alone(redis_server.url, prefix, "k", serializer), from_memory)


async def test_memory_keeps_the_serializers_copy_not_the_callers_object(
    redis_server: Any, prefix: str
) -> None:
    value = {"items": [1, 2]}
    async with CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)]
    ) as cache:
        await cache.set("k", value)
        value["items"].append(3)  # the caller's object, changed after the write
        assert await cache.get("k") == {"items": [1, 2]}
        assert cache.statistics().layer_hits["memory"] == 1


@pytest.mark.parametrize("with_memory", [True, False], ids=["memory+redis", "redis"])
async def test_a_fetched_value_is_what_later_gets_return(
    redis_server: Any, prefix: str, with_memory: bool
) -> None:
    layers: list[Any] = [MemoryLayer()] if with_memory else []
    layers.append(RedisLayer(url=redis_server.url, prefix=prefix))
    async with CacheStack(layers) as cache:

        async def fetch() -> object:
            return {"pair": (1, 2)}

        first = await cache.get("k", fetch)
        later = await cache.get("k", fetch)
        assert cache.statistics().fetches == 1
        assert same(first, {"pair": [1, 2]})
        assert same(later, first)
        if with_memory:
            assert later is first  # the one stored object, not the fetcher's


REFUSED = {
    "int key": {1: "x"},
    "keys colliding once stringified": {1: "a", "1": "b"},
    "uuid": {"id": uuid.UUID(int=1)},
    "nan": [math.nan],
    "int over 64 bits": 2**64,
}


@JSON_SERIALIZERS
@pytest.mark.parametrize("value", REFUSED.values(), ids=REFUSED.keys())
async def test_what_json_would_change_writes_no_layer(
    redis_server: Any, prefix: str, serializer: Serializer, value: object
) -> None:
    memory = MemoryLayer()
    layer = RedisLayer(url=redis_server.url, prefix=prefix, serializer=serializer)
    async with CacheStack([memory, layer]) as cache:
        with pytest.raises(SerializationError):
            await cache.set("k", value)
        with pytest.raises(SerializationError):
            await cache.set_many({"fine": 1, "bad": value})

        async def fetch() -> object:
            return value

        with pytest.raises(SerializationError):
            await cache.get("f", fetch)
        assert len(memory) == 0
        assert await layer.get_many(["k", "fine", "bad", "f"]) == {}


async def test_msgpack_refuses_what_it_cannot_read_back(redis_server: Any, prefix: str) -> None:
    # msgpack writes int map keys but refuses them when reading: stored, it would be
    # a corrupt entry on every read.
    memory = MemoryLayer()
    layer = RedisLayer(url=redis_server.url, prefix=prefix, serializer="msgpack")
    async with CacheStack([memory, layer]) as cache:
        with pytest.raises(SerializationError, match="does not read this value back"):
            await cache.set("k", {1: "x"})
        await cache.set("t", {"pair": (1, 2), "bytes": b"\x00"})
        assert same(await cache.get("t"), {"pair": [1, 2], "bytes": b"\x00"})
        assert len(memory) == 1
        assert await layer.get_many(["k"]) == {}
    got = await _from_redis_alone(redis_server.url, prefix, "t", "msgpack")
    assert same(got, {"pair": [1, 2], "bytes": b"\x00"})


# -- max_value_size ----------------------------------------------------------------------

LIMIT = 64
FITS = "x" * (LIMIT - 2)  # a JSON string: two quotes around it
TOO_BIG = FITS + "x"


async def test_a_value_at_max_value_size_is_stored(redis_server: Any, prefix: str) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix, max_value_size=LIMIT)
    async with CacheStack([MemoryLayer(), layer]) as cache:
        await cache.set("k", FITS)
        await cache.set_many({"m": FITS})

        async def fetch() -> object:
            return FITS

        assert await cache.get("f", fetch) == FITS
        stored = await layer.get_many(["k", "m", "f"])
        assert {key: record.value for key, record in stored.items()} == dict.fromkeys(
            ["k", "m", "f"], FITS
        )


async def test_a_value_over_max_value_size_writes_no_layer(redis_server: Any, prefix: str) -> None:
    memory = MemoryLayer()
    layer = RedisLayer(url=redis_server.url, prefix=prefix, max_value_size=LIMIT)
    async with CacheStack([memory, layer]) as cache:
        with pytest.raises(SerializationError, match="max_value_size"):
            await cache.set("k", TOO_BIG)
        with pytest.raises(SerializationError, match="max_value_size"):
            await cache.set_many({"fine": 1, "big": TOO_BIG})
        fetched = 0

        async def fetch() -> object:
            nonlocal fetched
            fetched += 1
            return TOO_BIG

        with pytest.raises(SerializationError, match="max_value_size"):
            await cache.get("f", fetch)
        assert len(memory) == 0
        assert await layer.get_many(["k", "fine", "big", "f"]) == {}
        with pytest.raises(SerializationError):  # not cached: the next get fetches again
            await cache.get("f", fetch)
        assert fetched == 2


async def test_a_faster_layer_too_small_for_a_value_is_not_backfilled(
    redis_server: Any, prefix: str
) -> None:
    url = redis_server.url
    async with CacheStack([RedisLayer(url=url, prefix=prefix + "big:")]) as writer:
        await writer.set("k", TOO_BIG)
    small = RedisLayer(url=url, prefix=prefix + "small:", max_value_size=LIMIT, name="small")
    memory = MemoryLayer()
    async with CacheStack([memory, small, RedisLayer(url=url, prefix=prefix + "big:")]) as cache:
        assert await cache.get("k") == TOO_BIG
        assert await small.get_many(["k"]) == {}
        assert len(memory) == 1  # the layers that can hold it still get their copy
