"""Freshness on a memory-only stack, on asyncio and trio: stale-while-revalidate,
refresh-ahead, stale-if-error with its backoff, soft and hard timeouts, fences on a
refresh, negative TTL, jitter, per-layer TTLs and ``get_entry``.

Time moves by the stack's injected clock; the fetch timeouts run on the loop's own
clock (they bound real waiting), so those tests use a fetcher that never returns and
short real timeouts whose outcome, not duration, is asserted.
"""

from __future__ import annotations

import dataclasses
import logging

import anyio
import pytest

import layercache._load as load_module
from layercache import (
    CacheStack,
    Entry,
    FetchTimeoutError,
    Freshness,
    MemoryLayer,
    Record,
)
from layercache._freshness import Backoff, Worth, best, judge
from layercache.testing import FakeClock

from ..helpers import GatedFetcher

pytestmark = pytest.mark.anyio

SWR = Freshness(stale_while_revalidate=30)
SIE = Freshness(stale_if_error=60, error_backoff=5)


class Counting:
    """A fetcher returning ``prefix:N`` on its Nth call, or raising while ``failing``."""

    def __init__(self, prefix: str = "v") -> None:
        self.prefix = prefix
        self.calls = 0
        self.failing = False

    async def __call__(self) -> str:
        self.calls += 1
        if self.failing:
            raise ConnectionError("the database is down")
        return f"{self.prefix}:{self.calls}"


# -- the value object and the pure parts ---------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"stale_while_revalidate": -1}, ValueError),
        ({"stale_if_error": float("inf")}, ValueError),
        ({"stale_if_error": "1"}, TypeError),
        ({"stale_while_revalidate": True}, TypeError),
        ({"refresh_ahead": 0}, ValueError),
        ({"refresh_ahead": 1}, ValueError),
        ({"refresh_ahead": 1.5}, ValueError),
        ({"jitter": 1}, ValueError),
        ({"jitter": -0.1}, ValueError),
        ({"jitter": "0.1"}, TypeError),
        ({"soft_timeout": 0}, ValueError),
        ({"hard_timeout": -1}, ValueError),
        ({"soft_timeout": 2, "hard_timeout": 1}, ValueError),
        ({"negative_ttl": 0}, ValueError),
        ({"error_backoff": -1}, ValueError),
    ],
)
def test_freshness_refuses_bad_settings(arguments: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        Freshness(**arguments)  # type: ignore[arg-type]


def test_freshness_is_frozen_and_replaceable() -> None:
    changed = dataclasses.replace(SWR, stale_if_error=90)
    assert (changed.stale_while_revalidate, changed.stale_window) == (30, 90)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SWR.jitter = 0.5  # type: ignore[misc]


def test_jitter_only_shortens_and_negative_ttl_takes_over_for_none() -> None:
    jittery = Freshness(jitter=0.2, negative_ttl=5)
    assert jittery.fresh_ttl(100, "v", 0.0) == 100
    assert jittery.fresh_ttl(100, "v", 0.5) == pytest.approx(90)
    assert (jittery.fresh_ttl(100, "v", 0.999) or 0) > 80
    assert jittery.fresh_ttl(100, None, 0.0) == 5
    assert jittery.fresh_ttl(None, "v", 0.5) is None


def test_judge_follows_the_entry_through_its_life() -> None:
    freshness = Freshness(stale_while_revalidate=10, stale_if_error=30)
    record = Record.new("v", 0.0, 100, stale=30, refresh_ahead=0.8)
    assert judge(record, 10, freshness) is Worth.FRESH
    assert judge(record, 85, freshness) is Worth.EARLY
    assert judge(record, 105, freshness) is Worth.REVALIDATE
    assert judge(record, 115, freshness) is Worth.FALLBACK
    assert judge(record, 115, Freshness()) is Worth.NONE  # a call without the windows
    forever = Record.new("v", 0.0, None)
    assert judge(forever, 1e9, freshness) is Worth.FRESH


def test_best_is_the_one_fresh_longest() -> None:
    early, late = (Record.new("a", 0, 10), "memory"), (Record.new("b", 0, 20), "redis")
    assert best([early, late]) is late
    forever = (Record.new("c", 0, None), "redis")
    assert best([forever, late]) is forever
    assert best([]) is None


def test_expired_keeps_the_stale_window_and_never_lengthens_a_life() -> None:
    record = Record.new("v", 0.0, 100, stale=30)
    expired = record.expired(50)
    assert expired is not None
    assert (expired.fresh_until, expired.stale_until, expired.refresh_at) == (50, 80, 50)
    late = record.expired(120)  # already stale: it keeps what it had left
    assert late is not None
    assert late.stale_until == 130
    assert Record.new("v", 0.0, 100).expired(50) is None  # no window: a delete
    assert Record.new("v", 0.0, None).expired(50) is None


def test_backoff_is_bounded_and_lapses() -> None:
    backoff = Backoff(limit=3)
    assert backoff.failed("a", 0, 10) is True
    assert backoff.failed("a", 1, 10) is False  # still backing off: not logged again
    assert backoff.active("a", 5)
    assert not backoff.active("a", 11)
    for key in "bcde":
        backoff.failed(key, 20, 10)
    assert len(backoff) == 3
    assert not backoff.active("b", 21)  # the oldest went first
    backoff.succeeded("e")
    assert not backoff.active("e", 21)


# -- stale-while-revalidate and refresh-ahead ------------------------------------------


async def test_a_stale_entry_is_served_at_once_while_one_refresh_runs(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(15)
        fetch = GatedFetcher("new")
        got = [await cache.get("k", fetch) for _ in range(5)]
        assert got == ["old"] * 5  # none waited for the fetch
        await fetch.started.wait()
        assert fetch.calls == 1
        fetch.open()
        await anyio.wait_all_tasks_blocked()
        assert await cache.get("k", fetch) == "new"
        stats = cache.statistics()
        assert (stats.stale_hits, stats.refreshes, stats.fetches) == (5, 1, 1)


async def test_while_a_refresh_runs_the_hot_path_serves_the_stale_entry(
    clock: FakeClock,
) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(15)
        fetch = GatedFetcher("new")
        assert await cache.get("k", fetch) == "old"
        await fetch.started.wait()  # the refresh runs, and has left the entry to serve
        assert cache._parts.single_flight.serving.keys() == {"k"}
        assert [await cache.get("k", fetch) for _ in range(5)] == ["old"] * 5
        assert cache.statistics().stale_hits == 6
        clock.advance(30)  # past stale_while_revalidate: too old for this caller
        got: list[object] = []

        async def late_caller() -> None:
            got.append(await cache.get("k", fetch))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(late_caller)
            await anyio.wait_all_tasks_blocked()
            assert got == []  # it waits for the refresh it joined, not its early answer
            fetch.open()
        assert got == ["new"]
        assert not cache._parts.single_flight.serving  # withdrawn with the refresh
        stats = cache.statistics()
        assert (stats.stale_hits, stats.refreshes, fetch.calls) == (6, 1, 1)


async def test_a_refresh_serves_only_calls_whose_windows_allow_it(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(15)
        fetch = GatedFetcher("new")
        assert await cache.get("k", fetch) == "old"
        await fetch.started.wait()  # the refresh runs, with its grant
        assert await cache.get("k", default="none") == "none"  # no fetcher: fresh only
        got: list[object] = []

        async def strict() -> None:  # no stale window: it waits for the refresh
            got.append(await cache.get("k", Counting(), freshness=Freshness()))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(strict)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            fetch.open()
        assert got == ["new"]


async def test_a_failed_refresh_fails_the_callers_it_cannot_answer_stale(
    clock: FakeClock,
) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(15)
        fetch = GatedFetcher(error=ConnectionError("down"))
        assert await cache.get("k", fetch) == "old"
        await fetch.started.wait()
        outcomes: dict[str, object] = {}

        async def join(name: str, freshness: Freshness) -> None:
            try:
                outcomes[name] = await cache.get("k", Counting(), freshness=freshness)
            except ConnectionError as error:
                outcomes[name] = error

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(join, "strict", Freshness())
            tasks.start_soon(join, "fail-safe", Freshness(stale_if_error=60))
            await anyio.wait_all_tasks_blocked()
            fetch.open()
        assert isinstance(outcomes["strict"], ConnectionError)
        assert outcomes["fail-safe"] == "old"
        stats = cache.statistics()
        assert (stats.refresh_errors, stats.stale_on_error) == (1, 1)


async def test_past_the_revalidate_window_a_call_waits_for_the_fetch(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(45)  # 35 s stale: beyond stale_while_revalidate
        assert await cache.get("k", Counting()) == "v:1"


async def test_without_a_fetcher_only_fresh_entries_answer(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(15)
        assert await cache.get("k", default="none") == "none"
        assert await cache.get_many(["k"]) == {}
        entry = await cache.get_entry("k")
        assert entry == Entry("old", "memory", "stale", 0.0, frozenset())


async def test_refresh_ahead_serves_the_fresh_value_and_refreshes_once(clock: FakeClock) -> None:
    ahead = Freshness(refresh_ahead=0.5)
    async with CacheStack([MemoryLayer()], clock=clock, freshness=ahead) as cache:
        fetch = Counting()
        assert await cache.get("k", fetch, ttl=10) == "v:1"
        clock.advance(4)
        assert await cache.get("k", fetch, ttl=10) == "v:1"
        assert fetch.calls == 1  # not due yet
        clock.advance(2)
        assert [await cache.get("k", fetch, ttl=10) for _ in range(3)] == ["v:1"] * 3
        await anyio.wait_all_tasks_blocked()
        assert fetch.calls == 2
        assert await cache.get("k", fetch, ttl=10) == "v:2"
        entry = await cache.get_entry("k")
        assert entry is not None
        assert entry.fresh_for == pytest.approx(10)
        stats = cache.statistics()
        assert (stats.refreshes, stats.stale_hits) == (1, 0)


async def test_a_change_during_a_refresh_keeps_its_result_out(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        for change in ("set", "delete", "tag", "clear", "expire"):
            await cache.set("k", "old", ttl=10, tags=["t"])
            clock.advance(15)
            fetch = GatedFetcher("refreshed")
            assert await cache.get("k", fetch) == "old"
            await fetch.started.wait()
            if change == "set":
                await cache.set("k", "changed", ttl=10)
            elif change == "delete":
                await cache.delete("k")
            elif change == "tag":
                await cache.invalidate_by_tag("t")
            elif change == "expire":
                await cache.expire("k")
                assert not cache._parts.single_flight.serving  # its grant went too
            else:
                await cache.clear()
            fetch.open()
            await anyio.wait_all_tasks_blocked()
            expected = "changed" if change == "set" else None
            assert await cache.get("k") == expected, change
        assert cache.statistics().stale_loads == 5


async def test_background_refreshes_are_capped(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load_module, "MAX_REFRESHES", 1)
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        await cache.set_many({"a": "old-a", "b": "old-b"}, ttl=10)
        clock.advance(15)
        first = GatedFetcher("new-a")
        assert await cache.get("a", first) == "old-a"
        await first.started.wait()
        second = Counting()
        assert await cache.get("b", second) == "old-b"  # served stale, no refresh
        await anyio.wait_all_tasks_blocked()
        assert second.calls == 0
        first.open()
        await anyio.wait_all_tasks_blocked()
        stats = cache.statistics()
        assert (stats.refreshes, stats.refreshes_skipped) == (1, 1)


# -- stale-if-error, backoff, timeouts -------------------------------------------------


async def test_a_failed_fetch_answers_with_the_stale_entry_then_backs_off(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SIE) as cache:
        fetch = Counting()
        assert await cache.get("k", fetch, ttl=10) == "v:1"
        clock.advance(20)
        fetch.failing = True
        with caplog.at_level(logging.WARNING, "layercache.stack"):
            assert await cache.get("k", fetch) == "v:1"
            clock.advance(1)
            assert await cache.get("k", fetch) == "v:1"  # backing off: no fetch
        assert fetch.calls == 2
        assert sum("failed" in record.getMessage() for record in caplog.records) == 1
        clock.advance(5)  # the backoff is over
        fetch.failing = False
        assert await cache.get("k", fetch) == "v:3"
        stats = cache.statistics()
        assert (stats.stale_on_error, stats.fetch_errors, stats.stale_hits) == (1, 1, 2)


async def test_a_failure_without_a_stale_entry_reaches_the_caller(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SIE) as cache:
        fetch = Counting()
        fetch.failing = True
        with pytest.raises(ConnectionError):
            await cache.get("k", fetch)
        await cache.set("old", "v", ttl=10)
        clock.advance(75)  # past stale_if_error too
        with pytest.raises(ConnectionError):
            await cache.get("old", fetch)


async def test_hard_timeout_cancels_the_fetch(clock: FakeClock) -> None:
    hard = Freshness(stale_if_error=60, hard_timeout=0.05)
    async with CacheStack([MemoryLayer()], clock=clock, freshness=hard) as cache:
        hung = GatedFetcher("never")
        with pytest.raises(FetchTimeoutError):
            await cache.get("k", hung)
        assert hung.cancelled
        assert isinstance(FetchTimeoutError(), TimeoutError)
        await cache.set("k", "old", ttl=10)
        clock.advance(20)
        again = GatedFetcher("never")
        assert await cache.get("k", again) == "old"  # the fail-safe answer
        assert again.cancelled
        stats = cache.statistics()
        assert (stats.fetch_timeouts, stats.stale_on_error, stats.loads_in_flight) == (2, 1, 0)


async def test_soft_timeout_answers_stale_and_lets_the_fetch_store(clock: FakeClock) -> None:
    soft = Freshness(stale_if_error=60, soft_timeout=0.05)
    async with CacheStack([MemoryLayer()], clock=clock, freshness=soft) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(20)
        slow = GatedFetcher("new")
        assert await cache.get("k", slow) == "old"  # after soft_timeout
        assert not slow.cancelled
        slow.open()
        await anyio.wait_all_tasks_blocked()
        assert await cache.get("k") == "new"


async def test_a_per_call_freshness_replaces_the_default(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(5)
        with pytest.raises(TypeError, match="Freshness"):
            await cache.get("k", Counting(), freshness="stale")  # type: ignore[arg-type]
        entry = await cache.get_entry("k")
        assert entry is not None
        assert entry.fresh_for == pytest.approx(5)
    # Written with the stack's default (no windows), the entry has no stale life:
    async with CacheStack([MemoryLayer()], clock=clock) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(15)
        assert await cache.get("k", Counting(), freshness=SWR) == "v:1"


# -- what is stored ----------------------------------------------------------------------


async def test_negative_ttl_and_jitter_shape_the_fresh_ttl(clock: FakeClock) -> None:
    shaped = Freshness(negative_ttl=2, jitter=0.2)
    async with CacheStack(
        [MemoryLayer()], clock=clock, freshness=shaped, random=lambda: 0.5
    ) as cache:

        async def nothing() -> None:
            return None

        assert await cache.get("none", nothing, ttl=100) is None
        assert await cache.get("some", Counting(), ttl=100) == "v:1"
        await cache.set("set-none", None, ttl=100)  # only a fetched None is negative
        none, some = await cache.get_entry("none"), await cache.get_entry("some")
        set_none = await cache.get_entry("set-none")
        assert set_none is not None
        assert set_none.fresh_for == pytest.approx(90)
        assert none is not None
        assert none.fresh_for == pytest.approx(1.8)
        assert some is not None
        assert some.fresh_for == pytest.approx(90)


async def test_ttl_per_layer_name(clock: FakeClock) -> None:
    near, far = MemoryLayer(name="near"), MemoryLayer(name="far", ttl=100)
    async with CacheStack([near, far], clock=clock) as cache:
        await cache.set("k", "v", ttl={"near": 5})
        assert near.get_many_nowait(["k"])["k"].fresh_until == pytest.approx(clock() + 5)
        assert far.get_many_nowait(["k"])["k"].fresh_until == pytest.approx(clock() + 100)
        with pytest.raises(ValueError, match="no layer"):
            await cache.set("k", "v", ttl={"nowhere": 5})
        with pytest.raises(ValueError, match="near"):
            await cache.get("k", Counting(), ttl={"near": -1})


async def test_get_entry_reports_the_layer_state_and_tags(clock: FakeClock) -> None:
    async with CacheStack([MemoryLayer()], clock=clock, freshness=SWR) as cache:
        assert await cache.get_entry("k") is None
        await cache.set("k", {"a": 1}, ttl=10, tags=["t"])
        clock.advance(4)
        assert await cache.get_entry("k") == Entry(
            {"a": 1}, "memory", "fresh", 6.0, frozenset({"t"})
        )
        await cache.set("forever", 1)
        forever = await cache.get_entry("forever")
        assert forever is not None
        assert (forever.state, forever.fresh_for) == ("fresh", None)
