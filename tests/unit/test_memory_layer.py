"""The memory layer's synchronous handlers, tested without an event loop, and its actor."""

from __future__ import annotations

from typing import Any

import pytest

from layercache import CacheStack, MemoryLayer, Record
from layercache.testing import FakeClock, LayerContract

from ..helpers import BAD_DURATIONS


def _layer(clock: FakeClock, **kwargs: object) -> MemoryLayer:
    layer = MemoryLayer(**kwargs)  # type: ignore[arg-type]
    layer.attach(clock)
    return layer


def _write(layer: MemoryLayer, key: str, ttl: float | None = None, *tags: str) -> None:
    layer.write_many_nowait({key: Record.new(key.upper(), layer.clock(), ttl, frozenset(tags))})


def test_lru_evicts_the_least_recently_used(clock: FakeClock) -> None:
    layer = _layer(clock, max_size=3)
    for key in "abc":
        _write(layer, key)
    assert layer.get_nowait("a") == "A"  # a is now the most recent
    _write(layer, "d")
    assert layer.get_nowait("b", "gone") == "gone"
    assert [layer.get_nowait(key) for key in "acd"] == ["A", "C", "D"]
    assert layer.statistics().evictions == 1


def test_get_many_and_overwrite_refresh_recency(clock: FakeClock) -> None:
    layer = _layer(clock, max_size=3)
    for key in "abc":
        _write(layer, key)
    layer.get_many_nowait(["a"])
    _write(layer, "b")  # overwriting makes b recent too
    _write(layer, "d")
    assert set(layer.get_many_nowait("abcd")) == {"a", "b", "d"}


def test_expired_entries_are_never_served(clock: FakeClock) -> None:
    layer = _layer(clock)
    _write(layer, "short", 5)
    _write(layer, "forever", None)
    clock.advance(4.999)
    assert layer.get_nowait("short") == "SHORT"
    clock.advance(0.001)
    assert layer.get_nowait("short", "expired") == "expired"
    assert layer.get_many_nowait(["short"]) == {}
    assert layer.get_nowait("forever") == "FOREVER"
    stats = layer.statistics()
    assert (stats.expirations, stats.size) == (1, 1)


def test_remaining_ttl_is_reported(clock: FakeClock) -> None:
    layer = _layer(clock)
    _write(layer, "k", 10)
    clock.advance(4)
    hit = layer.get_many_nowait(["k"])["k"]
    assert hit.remaining(clock()) == pytest.approx(6)


def test_sweep_drops_expired_entries_only(clock: FakeClock) -> None:
    layer = _layer(clock)
    for n in range(100):
        _write(layer, f"short:{n}", 1, "t")
        _write(layer, f"long:{n}", 100, "t")
    clock.advance(2)
    assert layer.sweep_nowait() == 100
    assert len(layer) == 100
    assert layer.invalidate_tag_nowait("t") == {f"long:{n}" for n in range(100)}


def test_tag_index_never_outlives_the_entries(clock: FakeClock) -> None:
    layer = _layer(clock, max_size=10)
    for n in range(10_000):
        _write(layer, f"key:{n}", 5 if n % 2 else None, f"tag:{n}", "shared")
    assert len(layer) == 10
    assert layer.tag_count == 11
    clock.advance(10)
    layer.sweep_nowait()
    assert layer.tag_count == 6
    layer.delete_many_nowait([f"key:{n}" for n in range(9990, 10_000, 2)])
    assert layer.tag_count == 0
    _write(layer, "a", None, "x")
    _write(layer, "a", None, "y")  # overwrite replaces the tags
    assert layer.invalidate_tag_nowait("x") == set()
    assert layer.tag_count == 1
    layer.clear_nowait()
    assert (len(layer), layer.tag_count) == (0, 0)


def test_invalidate_tag_unindexes_the_other_tags(clock: FakeClock) -> None:
    layer = _layer(clock)
    _write(layer, "a", None, "x", "y")
    _write(layer, "b", None, "y")
    assert layer.invalidate_tag_nowait("x") == {"a"}
    assert layer.invalidate_tag_nowait("y") == {"b"}
    assert layer.tag_count == 0


def test_invalidations_apply_synchronously(clock: FakeClock) -> None:
    layer = _layer(clock)
    for key in "abcd":
        _write(layer, key, 1 if key == "d" else None, "t" if key == "c" else "u")
    layer.delete_many_nowait(("a",))
    layer.invalidate_tag_nowait("t")
    clock.advance(2)
    layer.sweep_nowait()
    assert set(layer.get_many_nowait("abcd")) == {"b"}
    layer.clear_nowait()
    assert len(layer) == 0


def test_a_detached_layer_refuses_to_read_time() -> None:
    layer = MemoryLayer()
    with pytest.raises(RuntimeError, match="not attached"):
        layer.write_many_nowait({"k": Record.new(1, layer.clock(), 5.0)})


@pytest.mark.anyio
async def test_two_memory_layers_backfill_with_remaining_ttl(clock: FakeClock) -> None:
    small = MemoryLayer(max_size=2, ttl=5, name="small")
    big = MemoryLayer(max_size=100, name="big")
    async with CacheStack([small, big], clock=clock) as cache:
        for key in "abc":
            await cache.set(key, key.upper(), ttl=60, tags=["t"])
        assert len(small) == 2  # "a" was evicted from the small layer only
        assert await cache.get("a") == "A"
        assert cache.statistics().layer_hits == {"small": 0, "big": 1}
        hit = small.get_many_nowait(["a"])["a"]
        assert hit.remaining(clock()) == 5  # the small layer's own TTL caps the backfill
        assert hit.tags == frozenset({"t"})
        assert await cache.get("a") == "A"
        assert cache.statistics().layer_hits == {"small": 1, "big": 1}
        clock.advance(6)
        assert await cache.get_many(["a", "b", "c"]) == {"a": "A", "b": "B", "c": "C"}
        assert await cache.invalidate_by_tag("t") == 3


def _write_stale(layer: MemoryLayer, key: str, *tags: str) -> None:
    """``key``: fresh for 60 s, then stale for 30 (refreshed ahead after 45)."""
    now = layer.clock()
    record = Record.new(key.upper(), now, 60, frozenset(tags), stale=30, refresh_ahead=0.75)
    layer.write_many_nowait({key: record})


def test_expire_keeps_the_stale_window_and_deletes_what_has_none(clock: FakeClock) -> None:
    layer = _layer(clock)
    _write_stale(layer, "windowed", "t")
    _write(layer, "plain", 60, "t")
    _write(layer, "forever")
    clock.advance(10)
    assert layer.expire_many_nowait(["windowed", "plain", "forever", "absent"]) == {
        "windowed",
        "plain",
        "forever",
    }
    (entry,) = layer.get_many_nowait(["windowed", "plain", "forever"]).values()
    now = clock()
    assert entry.value == "WINDOWED"
    assert (entry.refresh_at, entry.fresh_until, entry.stale_until) == (now, now, now + 30)
    assert not entry.is_fresh(now)
    assert layer.get_nowait("windowed") == "WINDOWED"  # still held: a read finds it, stale
    assert layer.tag_count == 1  # the stale entry still carries its tag
    stats = layer.statistics()
    assert (stats.deletes, stats.size) == (2, 1)


def test_expire_never_lengthens_what_is_left(clock: FakeClock) -> None:
    layer = _layer(clock)
    _write_stale(layer, "k")
    clock.advance(80)  # stale already, 10 s left
    assert layer.expire_many_nowait(["k"]) == {"k"}
    entry = layer.get_many_nowait(["k"])["k"]
    assert (entry.fresh_until, entry.stale_until) == (clock() - 20, clock() + 10)
    clock.advance(10)
    assert layer.expire_many_nowait(["k"]) == set()  # gone: found nothing
    assert layer.statistics().expirations == 1


def test_expire_by_tag_reaches_only_that_tag(clock: FakeClock) -> None:
    layer = _layer(clock)
    _write_stale(layer, "a", "t", "u")
    _write(layer, "b", 60, "t", "u")
    _write_stale(layer, "c", "u")
    assert layer.expire_tag_nowait("t") == {"a", "b"}
    assert layer.expire_tag_nowait("absent") == set()
    found = layer.get_many_nowait(["a", "b", "c"])
    assert set(found) == {"a", "c"}
    assert not found["a"].is_fresh(clock())
    assert found["c"].is_fresh(clock())
    assert layer.expire_tag_nowait("t") == {"a"}  # kept stale, it still carries the tag
    assert layer.invalidate_tag_nowait("u") == {"a", "c"}
    assert layer.tag_count == 0


@pytest.mark.parametrize(("bad", "error"), BAD_DURATIONS)
def test_sweep_interval_is_checked(bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="sweep_interval"):
        MemoryLayer(sweep_interval=bad)


class TestMemoryLayerContract(LayerContract):
    def make_layer(self, *, ttl: float | None = None, max_size: int = 1000) -> MemoryLayer:
        return MemoryLayer(ttl=ttl, max_size=max_size)
