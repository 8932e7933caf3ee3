"""The contract every layer keeps, as a pytest class to subclass.

Each test opens a one-layer :class:`~layercache.CacheStack` around a fresh layer from
``make_layer`` and drives it through the public API and the layer interface. The
tests are async: run them with anyio's pytest plugin (they carry ``pytest.mark.anyio``
and use whatever ``anyio_backend`` fixture the suite defines).

Layers whose TTLs follow the stack's clock set ``follows_clock = True`` (the default):
the TTL tests then move a :class:`FakeClock` past the deadlines. A layer with its own
clock (Redis keeps time on the server) sets it to False; the TTL tests then check the
remaining TTL the layer reports instead of waiting for it to run out.

A layer that marks an expired entry stale, keeping its stale window, keeps
``keeps_stale_windows = True`` (the default); one that relies on the base class's
``expire_many``/``expire_tag`` (which delete) sets it to False.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

from .._layer import Layer
from .._record import Record
from .._stack import CacheStack
from ._clock import FakeClock

VALUES: list[Any] = [
    "text",
    "",
    "ünïcødé ✓",
    0,
    -17,
    2**53,
    1.5,
    True,
    False,
    None,
    [1, "two", [3.0]],
    {"nested": {"list": [1, 2], "none": None}},
]

KEYS = ["plain", "with:colons:7", "with space", "ключ", "k" * 1024, "*?[]", "{braces}"]


class LayerContract:
    """Subclass and implement :meth:`make_layer` to run the contract on a layer."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]
    follows_clock: ClassVar[bool] = True
    keeps_stale_windows: ClassVar[bool] = True

    def make_layer(self, *, ttl: float | None = None, max_size: int = 1000) -> Layer:
        """Return a fresh, empty layer with this default ``ttl`` (and ``max_size``, for
        layers that have one). Every test calls it once; implement it in the subclass."""
        raise NotImplementedError("LayerContract subclasses implement make_layer()")

    @asynccontextmanager
    async def stack(
        self, *, ttl: float | None = None, clock: FakeClock | None = None
    ) -> AsyncIterator[tuple[CacheStack, Layer]]:
        """``async with self.stack() as (cache, layer):`` a one-layer stack around a
        fresh layer, on ``clock`` (a new :class:`FakeClock` by default)."""
        layer = self.make_layer(ttl=ttl)
        async with CacheStack([layer], clock=clock or FakeClock()) as cache:
            yield cache, layer

    async def test_values_round_trip(self) -> None:
        async with self.stack() as (cache, _):
            for index, value in enumerate(VALUES):
                await cache.set(f"value:{index}", value)
            for index, value in enumerate(VALUES):
                assert await cache.get(f"value:{index}", default="absent") == value

    async def test_unusual_keys_round_trip(self) -> None:
        async with self.stack() as (cache, _):
            for key in KEYS:
                await cache.set(key, key[:10])
            assert await cache.get_many(KEYS) == {key: key[:10] for key in KEYS}

    async def test_miss_returns_default(self) -> None:
        async with self.stack() as (cache, _):
            assert await cache.get("absent") is None
            assert await cache.get("absent", default="fallback") == "fallback"

    async def test_cached_none_is_a_hit(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set("none", None)
            assert await cache.get("none", default="absent") is None
            assert await cache.get_many(["none"]) == {"none": None}

    async def test_overwrite_replaces_value(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set("k", 1)
            await cache.set("k", 2)
            assert await cache.get("k") == 2

    async def test_get_many_returns_only_found_keys(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set_many({"a": 1, "b": 2})
            assert await cache.get_many(["a", "b", "c", "a"]) == {"a": 1, "b": 2}
            assert await cache.get_many([]) == {}

    async def test_delete_and_delete_many(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set_many({"a": 1, "b": 2, "c": 3})
            await cache.delete("a")
            await cache.delete("never-there")
            await cache.delete_many(["b", "also-never-there"])
            assert await cache.get_many(["a", "b", "c"]) == {"c": 3}

    async def test_clear_removes_everything(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set_many({"a": 1, "b": 2}, tags=["t"])
            await cache.clear()
            assert await cache.get_many(["a", "b"]) == {}
            assert await cache.invalidate_by_tag("t") == 0

    async def test_invalidate_by_tag(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set("a", 1, tags=["red", "big"])
            await cache.set("b", 2, tags=["red"])
            await cache.set("c", 3, tags=["big"])
            await cache.set("d", 4)
            assert await cache.invalidate_by_tag("red") == 2
            assert await cache.get_many(["a", "b", "c", "d"]) == {"c": 3, "d": 4}
            assert await cache.invalidate_by_tag("red") == 0
            assert await cache.invalidate_by_tag("big") == 1
            assert await cache.get_many(["c", "d"]) == {"d": 4}

    async def test_overwrite_replaces_tags(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set("a", 1, tags=["old"])
            await cache.set("a", 2, tags=["new"])
            assert await cache.invalidate_by_tag("old") == 0
            assert await cache.get("a") == 2
            assert await cache.invalidate_by_tag("new") == 1
            assert await cache.get("a") is None

    async def test_overwrite_without_tags_drops_them(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set("a", 1, tags=["old"])
            await cache.set("a", 2)
            assert await cache.invalidate_by_tag("old") == 0
            assert await cache.get("a") == 2
            await cache.set("a", 3, tags=["old"])
            assert await cache.invalidate_by_tag("old") == 1
            assert await cache.get("a") is None

    async def test_deleted_key_leaves_its_tags(self) -> None:
        async with self.stack() as (cache, _):
            await cache.set("a", 1, tags=["t"])
            await cache.delete("a")
            await cache.set("a", 2)
            assert await cache.invalidate_by_tag("t") == 0
            assert await cache.get("a") == 2

    async def test_layer_reports_remaining_ttl_and_tags(self) -> None:
        async with self.stack() as (_, layer):
            now = layer.clock()
            await layer.write_many({"k": layer.record("v", now, 30.0, frozenset({"t"}))})
            await layer.write_many({"forever": Record.new(layer.encode("v"), now, None)})
            hits = await layer.get_many(["k", "forever", "absent"])
            assert set(hits) == {"k", "forever"}
            ttl = hits["k"].remaining(layer.clock())
            assert ttl is not None
            assert 0 < ttl <= 30.0
            assert hits["k"].tags == frozenset({"t"})
            assert hits["forever"].remaining(layer.clock()) is None

    async def test_per_call_ttl_expires(self) -> None:
        clock = FakeClock()
        async with self.stack(clock=clock) as (cache, layer):
            await cache.set("short", 1, ttl=10)
            await cache.set("long", 2, ttl=100)
            if not self.follows_clock:
                await self._check_remaining(layer, {"short": 10, "long": 100})
                return
            clock.advance(9.5)
            assert await cache.get_many(["short", "long"]) == {"short": 1, "long": 2}
            clock.advance(1)
            assert await cache.get_many(["short", "long"]) == {"long": 2}

    async def test_layer_default_ttl_applies_and_can_be_overridden(self) -> None:
        clock = FakeClock()
        async with self.stack(ttl=5, clock=clock) as (cache, layer):
            await cache.set("default", 1)
            await cache.set("longer", 2, ttl=50)
            if not self.follows_clock:
                await self._check_remaining(layer, {"default": 5, "longer": 50})
                return
            clock.advance(6)
            assert await cache.get_many(["default", "longer"]) == {"longer": 2}

    @staticmethod
    async def _check_remaining(layer: Layer, expected: dict[str, float]) -> None:
        """For layers on their own clock: each entry reports a TTL just under its own."""
        hits = await layer.get_many(list(expected))
        for key, ttl in expected.items():
            remaining = hits[key].remaining(layer.clock())
            assert remaining is not None
            assert ttl * 0.9 < remaining <= ttl

    async def test_statistics_count_layer_hits(self) -> None:
        async with self.stack() as (cache, layer):
            await cache.set("k", 1)
            await cache.get("k")
            await cache.get("k")
            await cache.get("absent")
            stats = cache.statistics()
            assert stats.layer_hits[layer.name] == 2
            assert stats.hits == 2
            assert stats.misses == 1

    async def _write_windowed(self, layer: Layer) -> None:
        """``windowed``: fresh 60 s then stale 30, refreshed ahead after 30; ``plain``
        and ``other``: fresh 60 s, no windows; all tagged ``t``."""
        now, tags = layer.clock(), frozenset({"t"})
        windowed = Record.new(layer.encode("w"), now, 60.0, tags, stale=30.0, refresh_ahead=0.5)
        plain = layer.record("p", now, 60.0, tags)
        await layer.write_many({"windowed": windowed, "plain": plain, "other": plain})

    def _check_expired(self, found: dict[str, Record], layer: Layer) -> None:
        """``windowed`` is stale from now for its stale window (or gone, for a layer that
        keeps no windows); ``plain`` is gone."""
        assert "plain" not in found
        if not self.keeps_stale_windows:
            assert "windowed" not in found
            return
        entry, now = found["windowed"], layer.clock()
        assert entry.value == "w"
        assert entry.tags == frozenset({"t"})
        assert entry.refresh_at is not None
        assert entry.fresh_until is not None
        assert entry.refresh_at <= entry.fresh_until <= now
        remaining = entry.remaining(now)
        assert remaining is not None
        assert 27.0 < remaining <= 30.0

    async def test_expire_keeps_the_stale_window_or_deletes(self) -> None:
        async with self.stack() as (cache, layer):
            await self._write_windowed(layer)
            assert await layer.expire_many(["windowed", "plain", "absent"]) == {
                "windowed",
                "plain",
            }
            found = await layer.get_many(["windowed", "plain", "other"])
            self._check_expired(found, layer)
            assert found["other"].is_fresh(layer.clock())
            assert await cache.expire_many(["windowed", "plain", "other"]) == (
                2 if self.keeps_stale_windows else 1
            )

    async def test_expire_by_tag_keeps_the_stale_window_or_deletes(self) -> None:
        async with self.stack() as (cache, layer):
            await self._write_windowed(layer)
            assert await cache.expire_by_tag("t") == 3
            found = await layer.get_many(["windowed", "plain", "other"])
            self._check_expired(found, layer)
            assert "other" not in found
            expected = {"windowed"} if self.keeps_stale_windows else set()
            assert await layer.expire_tag("t") == expected  # the stale one still carries it
            assert await cache.invalidate_by_tag("t") == len(expected)
