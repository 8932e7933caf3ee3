"""A stateful, model-based test: a ``CacheStack`` on one ``MemoryLayer`` against a dict.

Hypothesis runs random sequences of ``set``, ``set_many``, ``delete``, ``delete_many``,
``get`` (with and without a fetcher, with a fetcher that fails), ``get_many``,
``invalidate_by_tag``, ``expire_many`` and ``expire_by_tag`` (deletes here: the stack
writes no stale windows), ``clear`` and clock moves, and checks every answer and the
statistics against a plain-Python model of the layer. The synchronous state machine
drives the stack through an anyio blocking portal, once on asyncio and once on trio.
Time moves only through :class:`~layercache.testing.FakeClock`.

The model mirrors the memory layer entry for entry: the least-recently-used order and
the entries that have expired but are still stored (nobody has read them since) both
decide which entry an eviction drops, so a faithful model has to keep both.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from layercache import CacheStack, CacheStatistics, MemoryLayer
from layercache.testing import FakeClock

T = TypeVar("T")

KEY_NAMES = [f"k{index}" for index in range(6)]
TAG_NAMES = ["red", "green", "blue"]

KEYS = st.sampled_from(KEY_NAMES)
KEY_LISTS = st.lists(KEYS, max_size=8)
TAGS = st.sampled_from(TAG_NAMES)
TAG_SETS = st.frozensets(TAGS, max_size=3)
TTLS = st.sampled_from([None, 1, 2.5, 5, 10, 30])
# Half seconds hit expiry boundaries exactly (an entry is gone once ``expires <= now``).
CLOCK_STEPS = st.one_of(
    st.sampled_from([0.5, 1.0, 1.5, 2.5]),
    st.integers(min_value=1, max_value=24).map(lambda halves: halves / 2),
    st.floats(min_value=0.5, max_value=12.0),
)

# Long enough that the layer's background sweep never runs during a test: the model
# does not sweep, and entries that expired but are still stored affect eviction.
NO_SWEEP = 1e6

SETTINGS = settings(
    max_examples=45,
    stateful_step_count=40,
    deadline=None,
    database=None,
)


class _Sentinel:
    def __repr__(self) -> str:
        return "SENTINEL"


SENTINEL = _Sentinel()


class FetchFailedError(Exception):
    """What the failing fetcher raises."""


@dataclass(frozen=True)
class Config:
    name: str
    layer_ttl: float | None
    max_size: int


CONFIGS = [
    Config("no-eviction", layer_ttl=None, max_size=len(KEY_NAMES)),
    Config("layer-ttl-7", layer_ttl=7, max_size=len(KEY_NAMES)),
    Config("lru-3", layer_ttl=None, max_size=3),
    Config("lru-2-layer-ttl-7", layer_ttl=7, max_size=2),
]


@dataclass(frozen=True)
class Entry:
    value: object
    expires: float | None
    tags: frozenset[str]


class Model:
    """The memory layer as an ordered dict, least recently used first."""

    def __init__(self, clock: FakeClock, layer_ttl: float | None, max_size: int) -> None:
        self.clock = clock
        self.layer_ttl = layer_ttl
        self.max_size = max_size
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.evictions = 0

    def expired(self, entry: Entry) -> bool:
        return entry.expires is not None and entry.expires <= self.clock()

    def read(self, key: str) -> Entry | None:
        """A lookup: an expired entry is dropped, a live one becomes the most recent."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self.expired(entry):
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry

    def write(self, items: Mapping[str, object], ttl: float | None, tags: frozenset[str]) -> None:
        """One batch of writes; evictions happen once the whole batch is in."""
        ttl = self.layer_ttl if ttl is None else ttl
        for key, value in items.items():
            self.entries.pop(key, None)
            expires = None if ttl is None else self.clock() + ttl
            self.entries[key] = Entry(value, expires, tags)
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)
            self.evictions += 1

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.entries.pop(key, None)

    def live(self, key: str) -> bool:
        entry = self.entries.get(key)
        return entry is not None and not self.expired(entry)

    def stored_with_tag(self, tag: str) -> list[str]:
        return [key for key, entry in self.entries.items() if tag in entry.tags]

    def live_with_tag(self, tag: str) -> list[str]:
        return [
            key
            for key, entry in self.entries.items()
            if tag in entry.tags and not self.expired(entry)
        ]


class CacheMachine(RuleBasedStateMachine):
    """One open stack, one model; every rule does the same thing to both."""

    def __init__(self, portal: BlockingPortal, config: Config) -> None:
        super().__init__()
        self.portal = portal
        self.config = config
        self.clock = FakeClock()
        self.model = Model(self.clock, config.layer_ttl, config.max_size)
        self.values = itertools.count()
        self.hits = self.misses = self.fetches = self.fetch_errors = 0
        self.exit_stack = ExitStack()
        layer = MemoryLayer(ttl=config.layer_ttl, max_size=config.max_size, sweep_interval=NO_SWEEP)
        self.cache = self.exit_stack.enter_context(
            portal.wrap_async_context_manager(CacheStack([layer], clock=self.clock))
        )

    def teardown(self) -> None:
        self.exit_stack.close()
        assert self.cache.state == "closed"

    # -- helpers -----------------------------------------------------------------------

    def call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run ``function()`` in the portal's event loop and return its result."""
        return self.portal.call(function)

    def statistics(self) -> CacheStatistics:
        return self.portal.call(self.cache.statistics)

    def fresh_value(self, none: bool) -> object:
        """A value never used before in this run (or None, which is a value too)."""
        return None if none else f"value-{next(self.values)}"

    # -- writes ------------------------------------------------------------------------

    @rule(key=KEYS, none=st.booleans(), ttl=TTLS, tags=TAG_SETS)
    def set(self, key: str, none: bool, ttl: float | None, tags: frozenset[str]) -> None:
        value = self.fresh_value(none)
        self.call(lambda: self.cache.set(key, value, ttl=ttl, tags=sorted(tags)))
        self.model.write({key: value}, ttl, tags)

    @rule(
        keys=st.lists(KEYS, unique=True, max_size=5),
        none=st.booleans(),
        ttl=TTLS,
        tags=TAG_SETS,
    )
    def set_many(
        self, keys: list[str], none: bool, ttl: float | None, tags: frozenset[str]
    ) -> None:
        mapping = {key: self.fresh_value(none) for key in keys}
        self.call(lambda: self.cache.set_many(mapping, ttl=ttl, tags=tags))
        self.model.write(mapping, ttl, tags)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.call(lambda: self.cache.delete(key))
        self.model.delete([key])

    @rule(keys=KEY_LISTS)
    def delete_many(self, keys: list[str]) -> None:
        self.call(lambda: self.cache.delete_many(keys))
        self.model.delete(keys)

    @rule(tag=TAGS)
    def invalidate_by_tag(self, tag: str) -> None:
        live = self.model.live_with_tag(tag)
        stored = self.model.stored_with_tag(tag)
        count = self.call(lambda: self.cache.invalidate_by_tag(tag))
        # Every live key with the tag; expired ones still stored go too, uncounted.
        assert count == len(live), (count, live, stored)
        self.model.delete(stored)
        assert self.call(lambda: self.cache.invalidate_by_tag(tag)) == 0

    @rule(keys=KEY_LISTS)
    def expire_many(self, keys: list[str]) -> None:
        unique = list(dict.fromkeys(keys))
        live = [key for key in unique if self.model.live(key)]
        assert self.call(lambda: self.cache.expire_many(keys)) == len(live)
        self.model.delete(unique)  # no stale windows: expired ones still stored go too

    @rule(tag=TAGS)
    def expire_by_tag(self, tag: str) -> None:
        live = self.model.live_with_tag(tag)
        stored = self.model.stored_with_tag(tag)
        assert self.call(lambda: self.cache.expire_by_tag(tag)) == len(live)
        self.model.delete(stored)

    @rule()
    def clear(self) -> None:
        self.call(self.cache.clear)
        self.model.entries.clear()

    @rule(seconds=CLOCK_STEPS)
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- reads -------------------------------------------------------------------------

    @rule(key=KEYS, ttl=TTLS, tags=TAG_SETS)
    def get(self, key: str, ttl: float | None, tags: frozenset[str]) -> None:
        # Without a fetcher ttl and tags change nothing, but they take the slow path.
        expected = self.model.read(key)
        got = self.call(lambda: self.cache.get(key, ttl=ttl, tags=tags, default=SENTINEL))
        if expected is None:
            assert got is SENTINEL
            self.misses += 1
        else:
            assert got == expected.value
            self.hits += 1

    @rule(key=KEYS, none=st.booleans(), ttl=TTLS, tags=TAG_SETS)
    def get_with_fetcher(
        self, key: str, none: bool, ttl: float | None, tags: frozenset[str]
    ) -> None:
        value = self.fresh_value(none)
        calls: list[object] = []

        async def fetcher() -> object:
            calls.append(value)
            return value

        expected = self.model.read(key)
        got = self.call(
            lambda: self.cache.get(key, fetcher, ttl=ttl, tags=sorted(tags), default=SENTINEL)
        )
        if expected is None:
            assert calls == [value], "a miss runs the fetcher exactly once"
            assert got is value
            self.misses += 1
            self.fetches += 1
            self.model.write({key: value}, ttl, tags)
        else:
            assert calls == [], "a hit does not run the fetcher"
            assert got == expected.value
            self.hits += 1

    @rule(key=KEYS, ttl=TTLS, tags=TAG_SETS)
    def get_with_failing_fetcher(self, key: str, ttl: float | None, tags: frozenset[str]) -> None:
        calls: list[None] = []

        async def fetcher() -> object:
            calls.append(None)
            raise FetchFailedError(key)

        expected = self.model.read(key)
        if expected is None:
            with pytest.raises(FetchFailedError):
                self.call(lambda: self.cache.get(key, fetcher, ttl=ttl, tags=sorted(tags)))
            assert len(calls) == 1
            # No layer answered this get: a miss, "whether or not a fetcher then ran"
            # (CacheStatistics), and whether or not the fetcher succeeded.
            self.misses += 1
            self.fetches += 1
            self.fetch_errors += 1
        else:
            got = self.call(lambda: self.cache.get(key, fetcher, ttl=ttl, tags=sorted(tags)))
            assert calls == []
            assert got == expected.value
            self.hits += 1

    @rule(keys=KEY_LISTS)
    def get_many(self, keys: list[str]) -> None:
        expected: dict[str, object] = {}
        for key in dict.fromkeys(keys):
            entry = self.model.read(key)
            if entry is not None:
                expected[key] = entry.value
        before = self.statistics()
        got = self.call(lambda: self.cache.get_many(keys))
        assert got == expected
        after = self.statistics()
        # DESIGN counts hits and misses for get calls; how get_many counts its keys is
        # not specified, so only require the counters not to go backwards.
        assert after.hits >= before.hits
        assert after.misses >= before.misses
        assert after.fetches == before.fetches
        self.hits += after.hits - before.hits
        self.misses += after.misses - before.misses

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def statistics_agree(self) -> None:
        stats = self.statistics()
        assert stats.hits == sum(stats.layer_hits.values())
        assert (stats.hits, stats.misses) == (self.hits, self.misses)
        assert (stats.fetches, stats.fetch_errors) == (self.fetches, self.fetch_errors)
        assert (stats.loads_in_flight, stats.waiters, stats.stale_loads) == (0, 0, 0)
        (layer,) = stats.layers
        assert layer.max_size == self.config.max_size
        assert layer.size is not None
        assert layer.size <= self.config.max_size
        assert layer.size == len(self.model.entries)
        assert layer.evictions == self.model.evictions


def machine_for(portal: BlockingPortal, config: Config) -> type[CacheMachine]:
    class Machine(CacheMachine):
        def __init__(self) -> None:
            super().__init__(portal, config)

    return Machine


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: config.name)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_stack_matches_model(backend: str, config: Config) -> None:
    with start_blocking_portal(backend) as portal:
        run_state_machine_as_test(machine_for(portal, config), settings=SETTINGS)
