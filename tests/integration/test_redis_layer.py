"""The Redis layer against a real redis-server, on asyncio and trio.

Rules: every test uses its own key prefix on the shared server (or its own server when
it kills or reconfigures it); waiting is on events or on the layer's own answers, never
on sleeps; no timing assertions.
"""

from __future__ import annotations

import pickle
import random
import struct
import time
import uuid
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from layercache import (
    CacheStack,
    LayerUnavailableError,
    MemoryLayer,
    PickleSerializer,
    Record,
    RedisLayer,
    SerializationError,
)
from layercache._redis._address import parse_redis_url
from layercache._redis._transport import Transport
from layercache._validation import MAX_TTL
from layercache.testing import FakeClock, FaultProxy, LayerContract

from ..helpers import FORGED_IDS, FORGED_WINDOWS, GatedFetcher, envelope_v1

TAGS = frozenset({"t"})
DUST = 1e-6

pytestmark = pytest.mark.anyio


class TestRedisLayerContract(LayerContract):
    follows_clock = False

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: Any) -> None:
        self.url = redis_server.url

    def make_layer(self, *, ttl: float | None = None, max_size: int = 1000) -> RedisLayer:
        return RedisLayer(url=self.url, ttl=ttl, prefix=f"contract:{uuid.uuid4().hex}:")


async def test_layout_keeps_values_tags_and_index_apart(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        # A user key that looks like an internal name must not collide with one.
        await cache.set("t:colour", "a value", tags=["colour"])
        await cache.set("colour", "another", tags=["t:colour"])
        (names,) = await raw.call([("KEYS", prefix + "*")])
        assert isinstance(names, list)
        assert sorted(names) == sorted(
            f"{prefix}{name}".encode()
            for name in (
                "v:t:colour",
                "v:colour",
                "t:colour",
                "t:t:colour",
                "k:t:colour",
                "k:colour",
            )
        )
        assert await cache.invalidate_by_tag("colour") == 1
        assert await cache.get_many(["t:colour", "colour"]) == {"colour": "another"}


async def test_ttl_is_set_in_milliseconds(redis_server: Any, prefix: str, raw: Transport) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix, ttl=100)]) as cache:
        await cache.set("short", 1, ttl=1.5)
        await cache.set("default", 1)
        short, default = await raw.call(
            [("PTTL", prefix + "v:short"), ("PTTL", prefix + "v:default")]
        )
        assert isinstance(short, int)
        assert isinstance(default, int)
        assert 1000 < short <= 1500
        assert 99_000 < default <= 100_000


async def test_l2_hit_backfills_memory_with_the_remaining_ttl(
    redis_server: Any, prefix: str
) -> None:
    memory = MemoryLayer(ttl=60)
    async with CacheStack([memory, RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set("short", "s", ttl=5, tags=["t"])
        await cache.set("long", "l", ttl=3600)
        memory.clear_nowait()
        assert await cache.get("short") == "s"
        assert await cache.get_many(["long"]) == {"long": "l"}
        hits = memory.get_many_nowait(["short", "long"])
        now = memory.clock()
        short_ttl, long_ttl = hits["short"].remaining(now), hits["long"].remaining(now)
        assert short_ttl is not None
        assert long_ttl is not None
        assert 0 < short_ttl <= 5  # what Redis had left
        assert 59 < long_ttl <= 60  # capped by the memory layer's own TTL
        assert hits["short"].tags == frozenset({"t"})
        stats = cache.statistics()
        assert stats.layer_hits == {"memory": 0, "redis": 2}


async def test_tag_index_lives_in_redis(redis_server: Any, prefix: str) -> None:
    async with CacheStack([MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)]) as a:
        await a.set_many({"x": 1, "y": 2}, tags=["group"])
        await a.set("z", 3, tags=["other"])
    async with CacheStack([MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)]) as b:
        assert await b.invalidate_by_tag("group") == 2
        assert await b.get_many(["x", "y", "z"]) == {"z": 3}


async def test_overwrite_and_delete_leave_no_stale_tag_membership(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set("k", 1, tags=["old", "both"])
        await cache.set("k", 2, tags=["both"])
        await cache.set("gone", 3, tags=["both"])
        await cache.delete("gone")
        old, both, key_tags = await raw.call(
            [
                ("SMEMBERS", prefix + "t:old"),
                ("SMEMBERS", prefix + "t:both"),
                ("SMEMBERS", prefix + "k:k"),
            ]
        )
        assert old == []
        assert both == [b"k"]
        assert key_tags == [b"both"]


async def test_tag_set_lives_as_long_as_its_longest_member(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set("long", 1, ttl=1000, tags=["t"])
        await cache.set("short", 1, ttl=10, tags=["t"])
        (left,) = await raw.call([("PTTL", prefix + "t:t")])
        assert isinstance(left, int)
        assert left > 900_000
        await cache.set("forever", 1, tags=["t"])
        assert await raw.call([("PTTL", prefix + "t:t")]) == [-1]


async def test_clear_removes_only_this_prefix(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    # Unescaped, the pattern for "…a*:" would also match the sibling prefix "…ab:".
    starred, sibling = prefix + "a*:", prefix + "ab:"
    async with (
        CacheStack([RedisLayer(url=redis_server.url, prefix=starred, name="mine")]) as mine,
        CacheStack([RedisLayer(url=redis_server.url, prefix=sibling, name="other")]) as other,
    ):
        await mine.set_many({f"k{n}": n for n in range(2500)}, tags=["t"])
        await other.set("survivor", 1, tags=["t"])
        await raw.call([("SET", prefix + "a-neighbour", "x")])
        await mine.clear()
        assert await mine.get_many(["k0", "k2499"]) == {}
        (left,) = await raw.call([("KEYS", prefix + "*")])
        assert isinstance(left, list)
        expected = [sibling + "v:survivor", sibling + "t:t", sibling + "k:survivor"]
        assert set(left) == {name.encode() for name in [*expected, prefix + "a-neighbour"]}
        assert await other.get("survivor") == 1
        await other.clear()


async def test_unserializable_value_writes_no_layer(redis_server: Any, prefix: str) -> None:
    memory = MemoryLayer()
    async with CacheStack([memory, RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        with pytest.raises(SerializationError):
            await cache.set("k", {1, 2, 3})
        with pytest.raises(SerializationError):
            await cache.set_many({"fine": 1, "bad": object()})

        async def fetch_unserializable() -> object:
            return object()

        with pytest.raises(SerializationError):
            await cache.get("f", fetch_unserializable)
        assert len(memory) == 0
        assert await cache.get_many(["k", "fine", "bad", "f"]) == {}


@pytest.mark.parametrize(
    "garbage",
    [
        b"not an envelope",
        b"",
        b"\xc1LC\x01\x01\x00\x05\x00",  # tag count beyond the data
        b"\xc1LC\x01\x01\x00\x00{broken json",
        b"\xc1LC\x02\x01\x00\x00[]",  # format version 2, its windows missing
        b"\xc1LC\x03\x01\x00\x00[]",  # unknown format version
        b"\xc1LC\x01\x03\x00\x00" + pickle.dumps("pickled"),  # another serializer's id
        pickle.dumps(ZeroDivisionError),
    ],
)
async def test_undecodable_bytes_are_a_miss_and_get_deleted(
    redis_server: Any, prefix: str, raw: Transport, garbage: bytes
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([MemoryLayer(), layer]) as cache:
        await raw.call([("SET", prefix + "v:k", garbage)])
        fetcher = GatedFetcher(value="fresh")
        fetcher.open()
        assert await cache.get("k", fetcher) == "fresh"
        assert layer.statistics().corrupt == 1
        # The bad bytes were replaced by the fetched value, not served or kept.
        assert await layer.get_many(["k"]) != {}


# -- the envelope's freshness windows --------------------------------------------------


async def test_a_record_reads_back_with_its_three_deadlines(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([layer], clock=FakeClock()):
        written = Record.new(
            layer.encode("w"), layer.clock(), 60.0, TAGS, stale=30.0, refresh_ahead=0.5
        )
        began = time.monotonic()
        await layer.write_many({"k": written})
        read = (await layer.get_many(["k"]))["k"]
        took = time.monotonic() - began
        assert (read.value, read.tags) == ("w", TAGS)
        for got, wanted in (
            (read.refresh_at, written.refresh_at),
            (read.fresh_until, written.fresh_until),
            (read.stale_until, written.stale_until),
        ):
            assert got is not None
            assert wanted is not None
            assert got <= wanted + DUST  # never fresher, never longer-lived
            assert got >= wanted - 0.001 - took  # what Redis's clock moved on, at most
        assert read.refresh_at is not None
        assert read.fresh_until is not None
        assert read.stale_until is not None
        # The windows are whole milliseconds, exactly as written.
        assert abs(read.stale_until - read.fresh_until - 30.0) < DUST
        assert abs(read.fresh_until - read.refresh_at - 30.0) < DUST
        assert await raw.call([("GETRANGE", f"{prefix}v:k", 7, 22)]) == [
            struct.pack(">QQ", 30_000, 30_000)
        ]
        (left,) = await raw.call([("PTTL", f"{prefix}v:k")])
        assert isinstance(left, int)
        assert 85_000 < left <= 90_000  # the physical TTL


async def test_a_value_of_the_previous_release_reads_as_fresh_for_its_ttl(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([MemoryLayer(), layer], clock=FakeClock()) as cache:
        await raw.call(
            [
                ("SET", f"{prefix}v:old", envelope_v1(b'"old"', "t"), "PX", 30_000),
                ("SET", f"{prefix}v:forever", envelope_v1(b"[1]")),
            ]
        )
        found = await layer.get_many(["old", "forever"])
        old, forever = found["old"], found["forever"]
        assert (old.value, old.tags) == ("old", TAGS)
        assert old.refresh_at == old.fresh_until == old.stale_until
        remaining = old.remaining(layer.clock())
        assert remaining is not None
        assert 25 < remaining <= 30
        assert (forever.fresh_until, forever.stale_until, forever.refresh_at) == (None, None, None)
        assert await cache.get_many(["old", "forever"]) == {"old": "old", "forever": [1]}
        assert layer.statistics().corrupt == 0


@pytest.mark.parametrize(("data", "ttl_ms"), FORGED_WINDOWS, ids=FORGED_IDS)
async def test_forged_windows_are_corrupt_and_deleted(
    redis_server: Any, prefix: str, raw: Transport, data: bytes, ttl_ms: int | None
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    px = () if ttl_ms is None else ("PX", ttl_ms)
    async with CacheStack([MemoryLayer(), layer]) as cache:
        await raw.call([("SET", f"{prefix}v:k", data, *px)])
        assert await cache.get("k", default="miss") == "miss"
        assert layer.statistics().corrupt == 1
        assert await raw.call([("EXISTS", f"{prefix}v:k")]) == [0]


class _Explodes:
    ran = False

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_mark_ran, ())


def _mark_ran() -> None:
    _Explodes.ran = True


async def test_forged_pickle_is_never_unpickled(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    key = b"k" * 16
    layer = RedisLayer(url=redis_server.url, prefix=prefix, serializer=PickleSerializer(key=key))
    async with CacheStack([layer]) as cache:
        await cache.set("good", {"a": (1, 2)})
        assert await cache.get("good") == {"a": (1, 2)}  # pickle keeps tuples
        forged = b"\xc1LC\x01\x03\x00\x00" + b"\x00" * 32 + pickle.dumps(_Explodes())
        await raw.call([("SET", prefix + "v:evil", forged)])
        assert await cache.get("evil", default="miss") == "miss"
        assert not _Explodes.ran
        assert layer.statistics().corrupt == 1
        assert await raw.call([("EXISTS", prefix + "v:evil")]) == [0]


async def test_msgpack_serializer_round_trips(redis_server: Any, prefix: str) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=prefix, serializer="msgpack")
    async with CacheStack([layer]) as cache:
        await cache.set("k", {"bytes": b"\x00\xff", "list": [1, 2.5, None]})
        assert await cache.get("k") == {"bytes": b"\x00\xff", "list": [1, 2.5, None]}


async def test_concurrent_reads_become_few_round_trips(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    # Through a proxy that adds 20 ms: no reply can come back before the 200 readers
    # have all run. (With a server faster than the readers' own Python, on trio the
    # first few lone reads can each finish before the next reader starts: the caller
    # reads its own reply when it is already there, up to the connection's eager-read
    # limit, and those readers rightly go alone. That depends on speed, not on
    # batching, which is what this test checks.)
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        proxy.delay(0.02)
        await _read_200_at_once(proxy.url, prefix, raw)


async def _read_200_at_once(url: str, prefix: str, raw: Transport) -> None:
    layer = RedisLayer(url=url, prefix=prefix)
    async with CacheStack([layer]) as cache:
        await cache.set_many({f"k{n}": n for n in range(200)})
        before = await _command_calls(raw, "mget")
        results: dict[str, object] = {}

        async def read(key: str) -> None:
            results[key] = await cache.get(key)

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(read, f"k{n}")
        assert results == {f"k{n}": n for n in range(200)}
        mgets = await _command_calls(raw, "mget") - before
        assert 1 <= mgets <= 5


async def test_single_flight_covers_the_l2_read(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)]
    ) as cache:
        await cache.set("k", "v")
        await cache.layers[0].clear()
        before = await _command_calls(raw, "mget")
        results: list[object] = []

        async def read() -> None:
            results.append(await cache.get("k"))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(read)
        assert results == ["v"] * 100
        assert await _command_calls(raw, "mget") - before == 1


async def test_randomly_cancelled_requests_never_get_a_wrong_reply(
    redis_server: Any, prefix: str
) -> None:
    rng = random.Random(1234)
    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([layer]) as cache:
        await cache.set_many({f"k{n}": n for n in range(300)})
        wrong: list[tuple[str, object]] = []
        completed = cancelled = 0

        async def read(key: str, scope: anyio.CancelScope) -> None:
            nonlocal completed
            with scope:
                found = await layer.get_many([key])
                completed += 1
                if found[key].value != int(key[1:]):
                    wrong.append((key, found[key].value))

        for _ in range(10):
            scopes = [anyio.CancelScope() for _ in range(300)]
            async with anyio.create_task_group() as tg:
                for n, scope in enumerate(scopes):
                    tg.start_soon(read, f"k{n}", scope)
                # Cancel a random third, at random points of their lives.
                for scope in rng.sample(scopes, 100):
                    for _ in range(rng.randrange(4)):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
            cancelled += sum(scope.cancelled_caught for scope in scopes)
        assert wrong == []
        assert completed + cancelled == 3000
        assert cancelled > 0
        # The connection is still in step: every key reads back its own value.
        assert await cache.get_many([f"k{n}" for n in range(300)]) == {
            f"k{n}": n for n in range(300)
        }


async def test_database_number_in_the_url(redis_server: Any, prefix: str, raw: Transport) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url + "/3", prefix=prefix)]) as cache:
        await cache.set("k", "in db 3")
    assert await raw.call([("EXISTS", prefix + "v:k")]) == [0]
    async with CacheStack([RedisLayer(url=redis_server.url + "/3", prefix=prefix)]) as cache:
        assert await cache.get("k") == "in db 3"
        await cache.clear()


async def test_password_from_the_url(password_redis_server: Any, prefix: str) -> None:
    async with CacheStack([RedisLayer(url=password_redis_server.url, prefix=prefix)]) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
    wrong = password_redis_server.url.replace(password_redis_server.password, "wrong")
    with pytest.raises(LayerUnavailableError, match="authentication failed"):
        async with CacheStack([RedisLayer(url=wrong, prefix=prefix)]):
            pass


async def test_unix_socket(unix_redis_server: Any, prefix: str) -> None:
    assert unix_redis_server.url.startswith("unix://")
    async with CacheStack([RedisLayer(url=unix_redis_server.url, prefix=prefix)]) as cache:
        await cache.set("k", "over a unix socket")
        assert await cache.get("k") == "over a unix socket"


async def test_tls_with_a_private_ca(tls_redis_server: Any, prefix: str) -> None:
    assert tls_redis_server.url.startswith("rediss://")
    layer = RedisLayer(
        url=tls_redis_server.url, prefix=prefix, ssl_context=tls_redis_server.ssl_context()
    )
    async with CacheStack([layer]) as cache:
        await cache.set("k", "over TLS")
        assert await cache.get("k") == "over TLS"
    # Without the CA the certificate does not verify: the stack starts, calls fail.
    untrusted = RedisLayer(url=tls_redis_server.url, prefix=prefix, timeout=2.0)
    async with CacheStack([untrusted]) as cache:
        with pytest.raises(LayerUnavailableError):
            await cache.get("k")


async def test_reconnects_after_the_server_restarts(own_redis_server: Any, prefix: str) -> None:
    layer = RedisLayer(url=own_redis_server.url, prefix=prefix, timeout=2.0)
    async with CacheStack([layer]) as cache:
        await cache.set("k", "before")
        own_redis_server.kill()
        with pytest.raises(LayerUnavailableError):
            await cache.get("k")
        own_redis_server.start()
        with anyio.fail_after(20):
            await _transport(layer).wait_connected()
        await cache.set("k", "after", tags=["t"])  # scripts were loaded on reconnect
        assert await cache.get("k") == "after"
        assert await cache.invalidate_by_tag("t") == 1


async def test_flushed_script_cache_falls_back_to_eval(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set("a", 1, tags=["t"])
        assert await raw.call([("SCRIPT", "FLUSH")]) == [b"OK"]
        await cache.set("b", 2, tags=["t"])
        await cache.delete("a")
        assert await cache.invalidate_by_tag("t") == 1
        assert await cache.get_many(["a", "b"]) == {}


def _transport(layer: RedisLayer) -> Transport:
    assert layer._lanes is not None
    transport = layer._lanes.main
    assert isinstance(transport, Transport)
    return transport


async def _command_calls(raw: Transport, command: str) -> int:
    (info,) = await raw.call([("INFO", "commandstats")])
    assert isinstance(info, bytes)
    for line in info.decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_cancelled_stack_reads_never_get_a_wrong_value(
    redis_server: Any, prefix: str
) -> None:
    """Lone reads take the direct path (the caller writes, the reader answers); crowds
    take the batched one. Cancelling callers at random must never cross answers."""
    rng = random.Random(4321)
    memory = MemoryLayer()
    async with CacheStack([memory, RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set_many({f"k{n}": n for n in range(100)})
        wrong: list[tuple[str, object]] = []

        async def read(key: str, scope: anyio.CancelScope) -> None:
            with scope:
                value = await cache.get(key)
                if value != int(key[1:]):
                    wrong.append((key, value))

        for round_ in range(20):
            memory.clear_nowait()  # every read goes to Redis
            scopes = [anyio.CancelScope() for _ in range(100)]
            async with anyio.create_task_group() as tg:
                for n, scope in enumerate(scopes):
                    tg.start_soon(read, f"k{n}", scope)
                    if round_ % 2:
                        await anyio.lowlevel.checkpoint()  # lone reads: the direct path
                for scope in rng.sample(scopes, 30):
                    for _ in range(rng.randrange(3)):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
        assert wrong == []
        memory.clear_nowait()
        assert await cache.get_many([f"k{n}" for n in range(100)]) == {
            f"k{n}": n for n in range(100)
        }
        assert cache.statistics().loads_in_flight == 0


async def test_large_writes_go_out_whole_whatever_happens_to_their_callers(
    redis_server: Any, prefix: str
) -> None:
    """A write larger than the socket takes at once is finished in pieces while other
    requests wait their turn; callers cancelled meanwhile leave every command whole:
    each value is stored entirely or not at all, and the connection stays in step."""
    rng = random.Random(99)
    big = {f"big{n}": str(n) * 12_000_000 for n in range(4)}
    layer = RedisLayer(url=redis_server.url, prefix=prefix, timeout=30)
    async with CacheStack([layer]) as cache:
        await cache.set_many({f"k{n}": n for n in range(50)})
        wrong: list[tuple[str, object]] = []

        async def write(key: str, scope: anyio.CancelScope) -> None:
            with scope:
                await cache.set(key, big[key])

        async def read(key: str) -> None:
            value = await cache.get(key)
            if value != int(key[1:]):
                wrong.append((key, value))

        async with anyio.create_task_group() as tg:
            scopes = [anyio.CancelScope() for _ in big]
            for key, scope in zip(big, scopes, strict=True):
                tg.start_soon(write, key, scope)
            for n in range(50):
                tg.start_soon(read, f"k{n}")
            for scope in rng.sample(scopes, 3):
                for _ in range(rng.randrange(4)):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
        assert wrong == []
        for key, value in big.items():
            assert await cache.get(key) in (None, value)  # all of it, or none of it
        await cache.set("after", "fine")
        assert await cache.get("after") == "fine"
        assert layer.statistics().errors == 0


async def test_tag_sets_shed_members_whose_values_are_gone(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set_many({f"old{n}": n for n in range(100)}, tags=["busy"])
        # As if they had expired: the values go, their tag memberships stay behind.
        await raw.call([("DEL", *[f"{prefix}v:old{n}" for n in range(100)])])
        for n in range(200):
            await cache.set(f"new{n}", n, tags=["busy"])
        (size,) = await raw.call([("SCARD", prefix + "t:busy")])
        assert isinstance(size, int)
        assert 200 <= size < 300  # every live key is there; dead ones were shed
        assert await cache.invalidate_by_tag("busy") == 200


async def test_the_longest_ttl_accepted_is_one_redis_can_hold(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set("plain", 1, ttl=MAX_TTL)
        await cache.set("tagged", 2, ttl=MAX_TTL, tags=["t"])
        assert await cache.get_many(["plain", "tagged"]) == {"plain": 1, "tagged": 2}
        left = await raw.call([("PTTL", prefix + "v:plain"), ("PTTL", prefix + "t:t")])
        assert all(isinstance(ms, int) and ms > MAX_TTL * 999 for ms in left)


async def test_a_write_refused_by_maxmemory_leaves_the_old_value_and_its_tags(
    own_redis_server: Any, prefix: str
) -> None:
    raw = Transport(parse_redis_url(own_redis_server.url), timeout=5.0)
    layer = RedisLayer(url=own_redis_server.url, prefix=prefix)
    async with anyio.create_task_group() as tasks, CacheStack([layer]) as cache:
        await tasks.start(raw.run)
        await cache.set("k", "old", tags=["t"])
        await raw.call([("CONFIG", "SET", "maxmemory-policy", "noeviction")])
        await raw.call([("CONFIG", "SET", "maxmemory", "1")])
        for tags in ([], ["u"]):
            with pytest.raises(LayerUnavailableError, match="OOM command not allowed"):
                await cache.set("k", "new", tags=tags)
        await raw.call([("CONFIG", "SET", "maxmemory", "0")])
        assert await cache.get("k") == "old"
        assert await raw.call([("SMEMBERS", prefix + "k:k")]) == [[b"t"]]
        assert await cache.invalidate_by_tag("t") == 1
        assert await cache.get("k") is None
        tasks.cancel_scope.cancel()


async def test_a_tag_set_emptied_by_shedding_gets_the_new_entrys_ttl(
    redis_server: Any, prefix: str, raw: Transport
) -> None:
    # A dead member (no value, no lock) in a set that would outlive the new entry.
    await raw.call([("SADD", f"{prefix}t:t", "gone"), ("PEXPIRE", f"{prefix}t:t", 600_000)])
    async with CacheStack([RedisLayer(url=redis_server.url, prefix=prefix)]) as cache:
        await cache.set("k", 1, ttl=10, tags=["t"])
    members, left = await raw.call([("SMEMBERS", f"{prefix}t:t"), ("PTTL", f"{prefix}t:t")])
    assert members == [b"k"]
    assert isinstance(left, int)
    assert 0 < left <= 10_000  # the set was emptied and made again: not left without TTL


async def test_a_request_past_its_deadline_is_answered_not_sent(
    redis_server: Any, prefix: str
) -> None:
    from layercache._redis_layer import Read
    from layercache._reply import ReplySlot

    layer = RedisLayer(url=redis_server.url, prefix=prefix)
    async with CacheStack([layer]) as cache:
        await cache.set("k", 1)
        transport = _transport(layer)
        late: ReplySlot[Any] = ReplySlot()
        await layer._dispatch(transport, [Read(("k",), late, anyio.current_time() - 1)])
        with pytest.raises(Exception, match="queued too long"):
            await late.wait()
        assert transport.connected  # a caller that gave up does not cost the connection
        assert transport.disconnects == 0
        assert await cache.get("k") == 1


async def test_after_a_lone_read_the_idle_connection_is_still_watched(
    own_redis_server: Any, prefix: str
) -> None:
    """A lone read's caller may read its own reply (trio); once it is done, the
    transport watches the idle connection again, and reconnects as soon as the server
    drops it, before any request needs it."""
    # A long timeout: no request deadline wakes the reader during the test.
    layer = RedisLayer(url=own_redis_server.url, prefix=prefix, timeout=600)
    raw = Transport(parse_redis_url(own_redis_server.url), timeout=5.0)
    async with anyio.create_task_group() as tasks, CacheStack([layer]) as cache:
        await tasks.start(raw.run)
        await cache.set("k", 1)
        for _ in range(3):
            assert await cache.get("k") == 1
        transport = _transport(layer)
        assert (transport.connects, transport.disconnects) == (1, 0)
        await raw.call([("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")])
        with anyio.fail_after(10):
            while transport.connects < 2:  # nothing is sent: only the reader can notice
                await anyio.lowlevel.checkpoint()
        assert transport.disconnects == 1
        assert await cache.get("k") == 1
        tasks.cancel_scope.cancel()
