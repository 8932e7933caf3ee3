"""``expire``, ``expire_many`` and ``expire_by_tag`` on a stack of in-process layers:
entries with a stale window stay, stale from now; the others go; the count is of the
distinct keys found in any layer; arguments are checked as ``delete`` and
``invalidate_by_tag`` check them. A layer that keeps no stale windows gets the base
class's expire, a delete (the layer contract, run on two such layers). The Redis layer
and the bus: tests/integration/test_expire.py.

Rules: a :class:`FakeClock` moves time; the entries with windows are written into the
layers directly (the stack's own writes carry none yet); expired entries are looked at
through the layers' reads, which return stale entries with their deadlines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import pytest
from anyio.abc import TaskStatus

from layercache import (
    CacheClosedError,
    CacheStack,
    Layer,
    LayerStatistics,
    LocalLayer,
    MemoryLayer,
    Record,
)
from layercache.testing import FakeClock, LayerContract

pytestmark = pytest.mark.anyio

TAGS = frozenset({"t"})


def _windowed(layer: Layer, value: object = "v", tags: frozenset[str] = TAGS) -> Record:
    """Fresh for 60 s, then stale for 30 more."""
    return Record.new(layer.encode(value), layer.clock(), 60.0, tags, stale=30.0)


async def test_expire_marks_an_entry_with_a_stale_window_stale_in_every_layer() -> None:
    clock = FakeClock()
    fast, slow = MemoryLayer(name="fast"), MemoryLayer(name="slow")
    async with CacheStack([fast, slow], clock=clock) as cache:
        for layer in (fast, slow):
            layer.write_many_nowait({"k": _windowed(layer)})
        clock.advance(10)
        assert await cache.expire("k") == 1
        now = clock()
        for layer in (fast, slow):
            entry = layer.get_many_nowait(["k"])["k"]
            assert (entry.value, entry.tags) == ("v", TAGS)
            assert (entry.refresh_at, entry.fresh_until, entry.stale_until) == (now, now, now + 30)
        clock.advance(30)
        assert fast.get_many_nowait(["k"]) == slow.get_many_nowait(["k"]) == {}


async def test_without_a_stale_window_expire_is_a_delete() -> None:
    fast, slow = MemoryLayer(name="fast"), MemoryLayer(name="slow")
    async with CacheStack([fast, slow], clock=FakeClock()) as cache:
        await cache.set("k", 1, tags=["t"])
        assert await cache.expire("k") == 1
        assert await cache.get("k", default="gone") == "gone"
        assert await cache.expire("k") == 0
        await cache.set_many({"a": 1, "b": 2}, tags=["t"])
        assert await cache.expire_by_tag("t") == 2
        assert await cache.get_many(["a", "b"]) == {}
        assert fast.tag_count == slow.tag_count == 0


async def test_the_count_is_of_distinct_keys_found_in_any_layer() -> None:
    fast, slow = MemoryLayer(name="fast"), MemoryLayer(name="slow")
    async with CacheStack([fast, slow], clock=FakeClock()) as cache:
        fast.write_many_nowait({"only-fast": _windowed(fast), "both": _windowed(fast)})
        slow.write_many_nowait({"only-slow": _windowed(slow), "both": _windowed(slow)})
        keys = ["only-fast", "only-slow", "both", "both", "absent"]
        assert await cache.expire_many(keys) == 3
        assert await cache.expire_many(keys) == 3  # still there, stale
        assert await cache.expire_many([]) == 0
        assert await cache.expire_by_tag("t") == 3
        assert await cache.expire_by_tag("other") == 0
        assert await cache.invalidate_by_tag("t") == 3


async def test_expire_by_tag_leaves_other_tags_alone() -> None:
    clock = FakeClock()
    memory = MemoryLayer()
    async with CacheStack([memory], clock=clock) as cache:
        memory.write_many_nowait(
            {
                "red": _windowed(memory, tags=frozenset({"red"})),
                "both": _windowed(memory, tags=frozenset({"red", "blue"})),
                "blue": _windowed(memory, tags=frozenset({"blue"})),
            }
        )
        await cache.set("plain-red", 1, tags=["red"])
        assert await cache.expire_by_tag("red") == 3
        found = memory.get_many_nowait(["red", "both", "blue", "plain-red"])
        assert set(found) == {"red", "both", "blue"}
        assert [found[key].is_fresh(clock()) for key in ("red", "both", "blue")] == [
            False,
            False,
            True,
        ]
        assert await cache.invalidate_by_tag("blue") == 2  # the stale one kept its tags


BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    (1, TypeError),
    (None, TypeError),
    (b"k", TypeError),
    ("", ValueError),
    ("k" * 1025, ValueError),
    ("\udc80", ValueError),
]


async def _refusal(call: Awaitable[object]) -> tuple[type[BaseException], str]:
    with pytest.raises((TypeError, ValueError)) as refused:
        await call
    return type(refused.value), str(refused.value)


@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
async def test_bad_keys_are_refused_as_delete_refuses_them(
    key: Any, error: type[Exception]
) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        refused = await _refusal(cache.delete(key))
        assert refused[0] is error
        assert await _refusal(cache.expire(key)) == refused
        refused = await _refusal(cache.delete_many(["ok", key]))
        assert await _refusal(cache.expire_many(["ok", key])) == refused


@pytest.mark.parametrize("keys", ["abc", b"abc", 7, None])
async def test_a_key_list_that_is_not_one_is_refused_as_delete_many_refuses_it(
    keys: Any,
) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        refused = await _refusal(cache.delete_many(keys))
        assert refused[0] is TypeError
        assert await _refusal(cache.expire_many(keys)) == refused


@pytest.mark.parametrize(("tag", "error"), BAD_KEYS)
async def test_bad_tags_are_refused_as_invalidate_by_tag_refuses_them(
    tag: Any, error: type[Exception]
) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        refused = await _refusal(cache.invalidate_by_tag(tag))
        assert refused[0] is error
        assert await _refusal(cache.expire_by_tag(tag)) == refused


async def test_a_stack_that_is_not_open_refuses_expire() -> None:
    new, closed = CacheStack([MemoryLayer()]), CacheStack([MemoryLayer()])
    async with closed:
        pass
    for cache, state in ((new, "not open"), (closed, "closed")):
        for call in (cache.expire("k"), cache.expire_many(["k"]), cache.expire_by_tag("t")):
            with pytest.raises(CacheClosedError, match=state):
                await call


# -- layers that keep no stale windows: the base class's expire, a delete ----------------


class DictLayer(Layer):
    """A remote-like layer over a dict that keeps only what every layer must: it gets
    the base class's ``expire_many`` and ``expire_tag``."""

    def __init__(self, ttl: float | None = None) -> None:
        super().__init__(name="dict", ttl=ttl)
        self.records: dict[str, Record] = {}
        self.hits = 0

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        now = self.clock()
        found = {}
        for key in keys:
            record = self.records.get(key)
            if record is not None and (record.stale_until is None or record.stale_until > now):
                found[key] = record
        self.hits += len(found)
        return found

    async def write_many(self, records: Mapping[str, Record]) -> None:
        self.records.update(records)

    async def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.records.pop(key, None)

    async def invalidate_tag(self, tag: str) -> set[str]:
        found = await self.get_many([k for k, r in self.records.items() if tag in r.tags])
        await self.delete_many([k for k, r in list(self.records.items()) if tag in r.tags])
        return set(found)

    async def clear(self) -> None:
        self.records.clear()

    def statistics(self) -> LayerStatistics:
        return LayerStatistics("dict", "dict", "running", self.hits, 0, 0, 0, 0, 0, None, None)


class NoWindowsMemoryLayer(MemoryLayer):
    """The memory layer with :class:`LocalLayer`'s own expire: a delete."""

    expire_many_nowait = LocalLayer.expire_many_nowait
    expire_tag_nowait = LocalLayer.expire_tag_nowait


class TestDefaultExpireContract(LayerContract):
    keeps_stale_windows = False

    def make_layer(self, *, ttl: float | None = None, max_size: int = 1000) -> Layer:
        return DictLayer(ttl=ttl)


class TestDefaultLocalExpireContract(LayerContract):
    keeps_stale_windows = False

    def make_layer(self, *, ttl: float | None = None, max_size: int = 1000) -> Layer:
        return NoWindowsMemoryLayer(ttl=ttl, max_size=max_size)


async def test_the_default_expire_deletes_and_counts_what_it_found() -> None:
    memory, remote = MemoryLayer(), DictLayer()
    async with CacheStack([memory, remote], clock=FakeClock()) as cache:
        remote.records["remote"] = _windowed(remote)
        remote.records["both"] = _windowed(remote)
        memory.write_many_nowait({"both": _windowed(memory)})
        assert await cache.expire_many(["remote", "both", "absent"]) == 2
        assert remote.records == {}
        assert memory.get_many_nowait(["both"])["both"].fresh_until == memory.clock()
