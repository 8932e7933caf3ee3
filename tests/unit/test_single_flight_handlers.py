"""The single-flight actor's synchronous handlers, and the read path's one backfill
rule, tested the way DESIGN §3 promises: the handlers without an event loop (a plain
event class stands in for the loop's), the rule with a layer the test holds mid-read.

No sleeps: a held read waits on an event the test opens, and "every task has reached
its await" is ``anyio.wait_all_tasks_blocked()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import anyio
import pytest
from anyio.abc import TaskStatus

from layercache import CacheClosedError, CacheStack, Layer, LayerStatistics, MemoryLayer, Record
from layercache._single_flight import MISSING, SingleFlight
from layercache.testing import FakeClock


class PlainEvent:
    """An event that needs no running loop (the handlers only set and test it)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        raise AssertionError("nothing waits in these tests")


async def _fetch() -> object:
    return "fetched"


def _single_flight() -> SingleFlight:
    return SingleFlight(new_event=PlainEvent)


def test_join_registers_one_flight_per_key_and_kind() -> None:
    flights = _single_flight()
    first, new = flights.join("k", _fetch, None, frozenset())
    assert new
    again, new_again = flights.join("k", None, 5.0, frozenset({"t"}))
    assert new_again
    assert again is not first
    same, joined_new = flights.join("k", _fetch, 9.0, frozenset())
    assert same is first
    assert not joined_new
    assert same.ttl is None  # later callers share the first caller's settings
    assert flights.loads_in_flight == 2


def test_a_fence_makes_the_key_s_flights_stale_and_the_next_caller_starts_anew() -> None:
    flights = _single_flight()
    fetching, _ = flights.join("k", _fetch, None, frozenset())
    reading, _ = flights.join("k", None, None, frozenset())
    other, _ = flights.join("other", _fetch, None, frozenset())
    before = flights.fence_count
    flights.fence_keys(["k"])
    assert flights.fence_count == before + 1
    assert fetching.stale
    assert reading.stale
    assert not other.stale
    fresh, new = flights.join("k", _fetch, None, frozenset())
    assert new
    assert fresh is not fetching
    assert not fresh.stale
    # The stale flight still answers its own callers, and forgets only its own slot.
    flights.complete(fetching, ("old", None))
    assert fetching.reply.result() == ("old", None)
    assert flights.join("k", _fetch, None, frozenset()) == (fresh, False)


def test_a_tag_fence_reaches_every_read_and_the_fetches_with_that_tag() -> None:
    flights = _single_flight()
    tagged, _ = flights.join("a", _fetch, None, frozenset({"t"}))
    untagged, _ = flights.join("b", _fetch, None, frozenset({"u"}))
    reading, _ = flights.join("c", None, None, frozenset())
    looking, _ = flights.join("d", _fetch, None, frozenset({"u"}))
    for flight in (tagged, untagged):
        flight.watch(frozenset())  # they have looked at the layers: no other tags
    flights.fence_tag("t")
    # A read learns its entry's tags only once it finds it: every read is fenced, and
    # so is a fetch still looking at the layers.
    assert (tagged.stale, untagged.stale, reading.stale, looking.stale) == (
        True, False, True, True,
    )  # fmt: skip
    refreshing, _ = flights.join("e", _fetch, None, frozenset())
    refreshing.watch(frozenset({"v"}))  # the tags of the entry it refreshes
    flights.fence_tag("v")
    assert refreshing.stale
    flights.fence_all()
    assert untagged.stale
    assert flights.fence_count == 3


def test_complete_answers_and_forgets() -> None:
    flights = _single_flight()
    flight, _ = flights.join("k", None, None, frozenset())
    flights.complete(flight, (MISSING, None))
    assert flight.reply.done
    assert flight.reply.result() == (MISSING, None)
    assert flights.loads_in_flight == 0
    failed, _ = flights.join("k", None, None, frozenset())
    flights.complete(failed, ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        failed.reply.result()


def test_launch_outside_a_running_stack_fails_the_flight_at_once() -> None:
    flights = _single_flight()
    flight, new = flights.join("k", _fetch, None, frozenset())
    assert new
    assert flights.launch(flight) is False
    with pytest.raises(CacheClosedError):
        flight.reply.result()
    assert flights.loads_in_flight == 0


class HeldLayer(Layer):
    """A remote-looking layer (not local) whose reads wait until the test lets go."""

    def __init__(self) -> None:
        super().__init__(name="held", ttl=None)
        self.records: dict[str, Record] = {}
        self.reading = anyio.Event()
        self.release = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep_forever()

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        found = {key: self.records[key] for key in keys if key in self.records}
        self.reading.set()
        await self.release.wait()
        return found

    async def write_many(self, records: Mapping[str, Record]) -> None:
        self.records.update(records)

    async def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.records.pop(key, None)

    async def invalidate_tag(self, tag: str) -> set[str]:
        return set()

    async def clear(self) -> None:
        self.records.clear()

    def statistics(self) -> LayerStatistics:
        return LayerStatistics("held", "held", "running", 0, 0, 0, 0, 0, 0, None, None)


@pytest.mark.anyio
@pytest.mark.parametrize("change", ["set other key", "delete other key", "tag", "clear"])
async def test_a_read_that_a_fence_overtook_copies_nothing_up(change: str) -> None:
    memory, held = MemoryLayer(), HeldLayer()
    async with CacheStack([memory, held], clock=FakeClock()) as cache:
        held.records["k"] = Record.new("old", held.clock(), None)
        held.release.set()
        async with anyio.create_task_group() as tasks:
            held.release = anyio.Event()
            results: dict[str, object] = {}

            async def read() -> None:
                results.update(await cache.get_many(["k"]))

            tasks.start_soon(read)
            await held.reading.wait()
            await anyio.wait_all_tasks_blocked()
            if change == "set other key":
                await cache.set("other", 1)
            elif change == "delete other key":
                await cache.delete("other")
            elif change == "tag":
                await cache.invalidate_by_tag("t")
            else:
                await cache.clear()
                held.records["k"] = Record.new("old", held.clock(), None)
            held.release.set()
        assert results == {"k": "old"}  # the caller still gets what it read
        assert "k" not in memory.get_many_nowait(["k"])  # but nothing was copied up


@pytest.mark.anyio
async def test_an_unfenced_read_copies_up() -> None:
    memory, held = MemoryLayer(), HeldLayer()
    held.release.set()
    async with CacheStack([memory, held], clock=FakeClock()) as cache:
        held.records["k"] = Record.new("value", held.clock(), None, frozenset({"t"}))
        assert await cache.get_many(["k"]) == {"k": "value"}
        copied = memory.get_many_nowait(["k"])["k"]
        assert (copied.value, copied.tags) == ("value", frozenset({"t"}))


@pytest.mark.anyio
@pytest.mark.parametrize("change", ["set", "delete"])
async def test_a_read_for_a_flight_is_fenced_by_its_own_key_only(change: str) -> None:
    memory, held = MemoryLayer(), HeldLayer()
    async with CacheStack([memory, held], clock=FakeClock()) as cache:
        held.records["k"] = Record.new("old", held.clock(), None)
        held.records["j"] = Record.new("j", held.clock(), None)
        results: dict[str, object] = {}

        async def read(key: str) -> None:
            results[key] = await cache.get(key)  # a reading flight each, one batch

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read, "k")
            tasks.start_soon(read, "j")
            await held.reading.wait()
            await anyio.wait_all_tasks_blocked()
            if change == "set":
                await cache.set("k", "new")
            else:
                await cache.delete("k")
            held.release.set()
        assert results == {"k": "old", "j": "j"}  # each asked before the change
        in_memory = memory.get_many_nowait(["k", "j"])
        assert in_memory["j"].value == "j"  # another key's change does not stop its copy
        if change == "set":
            assert in_memory["k"].value == "new"  # the read's old value was not copied over
        else:
            assert "k" not in in_memory
