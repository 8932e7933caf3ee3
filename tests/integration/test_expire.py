"""``expire``, ``expire_many`` and ``expire_by_tag`` against a real Redis: entries keep
their stale windows in Redis (the expire scripts read them from the envelope), in memory,
and in the peers' memory (the bus); entries without one (the previous release's values,
forged windows) are deleted. (The envelope itself: tests/integration/test_redis_layer.py;
without a server: tests/unit/test_envelope.py and tests/unit/test_expire.py.)

Rules: a :class:`FakeClock` stands still while Redis's own clock moves on, so a deadline
read back can only be earlier than written, by the time the test took; entries with
windows are written into the layers directly (the stack's own writes carry none yet)
and looked at through the layers' reads; the raw transport looks at the bytes. Peers
are waited for with ``invalidations_received``, never with sleeps.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from layercache import CacheStack, MemoryLayer, Record, RedisInvalidationBus, RedisLayer
from layercache._redis._address import parse_redis_url
from layercache._redis._transport import Transport
from layercache.testing import FakeClock, RedisServer, invalidations_received

from ..helpers import FORGED_IDS, FORGED_WINDOWS, envelope_v1, envelope_v2

pytestmark = pytest.mark.anyio

TAGS = frozenset({"t"})
DUST = 1e-6


def _windowed(layer: RedisLayer | MemoryLayer, tags: frozenset[str] = TAGS) -> Record:
    """Fresh for 60 s (refreshed ahead after 30), then stale for 30 more."""
    now = layer.clock()
    return Record.new(layer.encode("w"), now, 60.0, tags, stale=30.0, refresh_ahead=0.5)


async def _windows_stored(raw: Transport, name: str) -> tuple[int, int]:
    (head,) = await raw.call([("GETRANGE", name, 7, 22)])
    assert isinstance(head, bytes)
    stale_ms, early_ms = struct.unpack(">QQ", head)
    return stale_ms, early_ms


async def _pttl(raw: Transport, name: str) -> int:
    (left,) = await raw.call([("PTTL", name)])
    assert isinstance(left, int)
    return left


# -- what the envelope says --------------------------------------------------------------


async def test_an_entry_without_windows_is_deleted(
    redis_server: RedisServer, prefix: str, raw: Transport
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([MemoryLayer(), layer], clock=FakeClock()) as cache:
        await raw.call([("SET", f"{prefix}v:old", envelope_v1(b'"old"', "t"), "PX", 30_000)])
        await layer.write_many({"plain": layer.record("p", layer.clock(), 60.0, TAGS)})
        await raw.call([("SET", f"{prefix}v:forever", envelope_v2(0, 0, b"[1]"))])
        assert await cache.expire_many(["old", "plain", "forever"]) == 3
        assert await layer.get_many(["old", "plain", "forever"]) == {}
        assert await raw.call([("EXISTS", f"{prefix}t:t", f"{prefix}k:plain")]) == [0]
        assert layer.statistics().corrupt == 0


@pytest.mark.parametrize(("data", "ttl_ms"), FORGED_WINDOWS, ids=FORGED_IDS)
async def test_forged_windows_are_deleted_not_kept_stale(
    redis_server: RedisServer, prefix: str, raw: Transport, data: bytes, ttl_ms: int | None
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    px = () if ttl_ms is None else ("PX", ttl_ms)
    async with CacheStack([MemoryLayer(), layer]) as cache:
        await raw.call([("SET", f"{prefix}v:k", data, *px)])
        assert await cache.expire("k") == 1
        assert await raw.call([("EXISTS", f"{prefix}v:k")]) == [0]


# -- expire in Redis ---------------------------------------------------------------------


async def test_expire_keeps_the_stale_window_in_redis_and_memory(
    redis_server: RedisServer, prefix: str, raw: Transport
) -> None:
    clock = FakeClock()
    memory, layer = MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([memory, layer], clock=clock) as cache:
        plain = layer.record("p", clock(), 60.0, TAGS)
        await layer.write_many({"windowed": _windowed(layer), "plain": plain})
        memory.write_many_nowait({"windowed": _windowed(memory)})
        await raw.call([("SET", f"{prefix}l:windowed", "a-loading-token")])
        assert await cache.expire_many(["windowed", "plain", "absent"]) == 2
        now = clock()
        in_redis = (await layer.get_many(["windowed", "plain"]))["windowed"]
        in_memory = memory.get_many_nowait(["windowed"])["windowed"]
        for entry in (in_redis, in_memory):
            assert (entry.value, entry.tags) == ("w", TAGS)
            assert entry.refresh_at == entry.fresh_until
            assert entry.fresh_until is not None
            assert entry.fresh_until <= now
            remaining = entry.remaining(now)
            assert remaining is not None
            assert 25 < remaining <= 30
        # Redis: the stale window is the TTL now, the refresh-ahead window is gone, the
        # tag index follows, the lock of a load in flight is gone (it stores nothing).
        assert await _windows_stored(raw, f"{prefix}v:windowed") == (30_000, 0)
        assert 25_000 < await _pttl(raw, f"{prefix}v:windowed") <= 30_000
        assert 25_000 < await _pttl(raw, f"{prefix}k:windowed") <= 30_000
        assert await raw.call([("SMEMBERS", f"{prefix}t:t")]) == [[b"windowed"]]
        names = [f"{prefix}{name}" for name in ("v:plain", "k:plain", "l:windowed")]
        assert await raw.call([("EXISTS", *names)]) == [0]
        assert layer.statistics().deletes == 1


async def test_expire_leaves_an_entry_already_stale_as_it_is(
    redis_server: RedisServer, prefix: str, raw: Transport
) -> None:
    clock = FakeClock()
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([layer], clock=clock) as cache:
        now = clock()
        stale = Record(layer.encode("s"), now - 5, now + 30, TAGS, refresh_at=now - 10)
        await layer.write_many({"k": stale})
        assert await _windows_stored(raw, f"{prefix}v:k") == (30_000, 0)
        assert await cache.expire("k") == 1
        assert await _windows_stored(raw, f"{prefix}v:k") == (30_000, 0)
        assert 25_000 < await _pttl(raw, f"{prefix}v:k") <= 30_000
        assert await cache.expire_by_tag("t") == 1  # still there, still stale


async def test_expire_by_tag_in_redis_keeps_the_stale_entries_in_the_index(
    redis_server: RedisServer, prefix: str, raw: Transport
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([MemoryLayer(), layer], clock=FakeClock()) as cache:
        both = frozenset({"t", "u"})
        await layer.write_many(
            {
                "a": _windowed(layer, both),
                "b": layer.record("b", layer.clock(), 60.0, both),
                "c": _windowed(layer, frozenset({"u"})),
            }
        )
        # "d": a key a load carrying "t" is filling (the coordinator's ACQUIRE): no value
        # yet, a lock, a member of the tag set.
        await raw.call([("SET", f"{prefix}l:d", "token"), ("SADD", f"{prefix}t:t", "d")])
        assert await cache.expire_by_tag("t") == 2
        tagged = await raw.call([("SMEMBERS", f"{prefix}t:t"), ("SMEMBERS", f"{prefix}t:u")])
        assert [set(names) for names in tagged if isinstance(names, list)] == [
            {b"a"},
            {b"a", b"c"},
        ]
        assert await raw.call([("EXISTS", f"{prefix}l:d", f"{prefix}v:b")]) == [0]
        found = await layer.get_many(["a", "b", "c"])
        assert set(found) == {"a", "c"}
        assert not found["a"].is_fresh(layer.clock())
        assert found["c"].is_fresh(layer.clock())
        assert await cache.expire_by_tag("t") == 1
        assert await cache.invalidate_by_tag("u") == 2
        assert await raw.call([("EXISTS", f"{prefix}t:t", f"{prefix}t:u")]) == [0]


async def test_expire_works_when_redis_is_out_of_memory(
    own_redis_server: RedisServer, prefix: str
) -> None:
    # It shrinks what it touches: Redis must not refuse it at maxmemory, as it refuses
    # a script whose first write may use memory.
    raw = Transport(parse_redis_url(own_redis_server.url), timeout=5.0)
    layer = RedisLayer(url=own_redis_server.url, prefix=prefix)
    async with anyio.create_task_group() as tasks, CacheStack([layer], clock=FakeClock()) as cache:
        await tasks.start(raw.run)
        plain = layer.record("p", layer.clock(), 60.0, TAGS)
        await layer.write_many({"windowed": _windowed(layer), "plain": plain})
        await raw.call([("CONFIG", "SET", "maxmemory-policy", "noeviction")])
        await raw.call([("CONFIG", "SET", "maxmemory", "1")])
        assert await cache.expire_many(["windowed", "plain"]) == 2
        assert await cache.expire_by_tag("t") == 1
        await raw.call([("CONFIG", "SET", "maxmemory", "0")])
        assert await _windows_stored(raw, f"{prefix}v:windowed") == (30_000, 0)
        tasks.cancel_scope.cancel()


# -- on every instance -------------------------------------------------------------------


@asynccontextmanager
async def _peers(url: str) -> AsyncIterator[tuple[CacheStack, CacheStack]]:
    prefix = f"expire:{uuid.uuid4().hex[:8]}:"
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                CacheStack(
                    [MemoryLayer(), RedisLayer(url=url, prefix=prefix)],
                    invalidation_bus=RedisInvalidationBus(url, channel=f"{prefix}bus"),
                )
            )
            for _ in range(2)
        ]
        yield a, b


def _memory(cache: CacheStack) -> MemoryLayer:
    memory = cache.layers[0]
    assert isinstance(memory, MemoryLayer)
    return memory


async def _delivered(cache: CacheStack, count: int) -> None:
    with anyio.fail_after(10):
        await invalidations_received(cache, count)


async def _in_both_memories(a: CacheStack, b: CacheStack, keys: list[str]) -> None:
    """Write ``keys`` (``w*`` windowed, ``p*`` plain, tagged by their last character)
    to Redis through ``a``'s layer, and have both stacks read them into memory."""
    layer = a.layers[1]
    assert isinstance(layer, RedisLayer)
    records = {}
    for key in keys:
        tags = frozenset({key[-1]})
        if key.startswith("w"):
            records[key] = _windowed(layer, tags)
        else:
            records[key] = layer.record(key, layer.clock(), 60.0, tags)
    await layer.write_many(records)
    for cache in (a, b):
        assert set(await cache.get_many(keys)) == set(keys)  # copied into memory
        assert set(_memory(cache).get_many_nowait(keys)) == set(keys)


def _check_expired(cache: CacheStack, windowed: str, plain: str) -> None:
    memory = _memory(cache)
    found = memory.get_many_nowait([windowed, plain])
    assert set(found) == {windowed}
    now = memory.clock()
    assert found[windowed].fresh_until is not None
    assert found[windowed].fresh_until <= now  # type: ignore[operator]
    remaining = found[windowed].remaining(now)
    assert remaining is not None
    assert 25 < remaining <= 30


async def test_an_expire_reaches_the_peers_memory_as_an_expire(redis_server: RedisServer) -> None:
    async with _peers(redis_server.url) as (a, b):
        await _in_both_memories(a, b, ["w1", "p1", "w2", "p2"])
        assert await a.expire_many(["w1", "p1"]) == 2
        await _delivered(b, 1)
        for cache in (a, b):
            _check_expired(cache, "w1", "p1")
            assert _memory(cache).get_many_nowait(["w2"])["w2"].is_fresh(_memory(cache).clock())
        assert await b.expire_by_tag("2") == 2
        await _delivered(a, 1)
        for cache in (a, b):
            _check_expired(cache, "w2", "p2")
        stats = a.statistics()
        assert (stats.invalidations_sent, stats.invalidations_received) == (1, 1)
        assert stats.invalidations_rejected == 0
