"""One owner (DESIGN §2): a stack is used from the thread and event loop that entered it.

A call from another thread, or from another event loop in the owner's thread, raises
``RuntimeError`` at once and changes nothing; ``statistics()`` is read from any thread.
The foreign calls run in a worker thread (``anyio.to_thread``) or nested in the owner's
task (the owner's loop waits inside that step). Nothing here sleeps: the test awaits the
worker's answer and then compares the owner's state; the deadlines only stop a hang.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import anyio
import pytest
import trio.testing

from layercache import CacheStack, CacheStatistics, MemoryLayer

from ..foreign import FOREIGN_CALLS, call_foreign, refusals

pytestmark = pytest.mark.anyio

ALL_REFUSED = {name: "refused" for name, _ in FOREIGN_CALLS}
EXPECTED = {"hit": "from memory", "remote": "from the second layer"}


async def _fill(cache: CacheStack, memory: MemoryLayer) -> CacheStatistics:
    """Store ``hit`` in every layer, ``remote`` behind ``memory`` only; the statistics."""
    await cache.set("remote", EXPECTED["remote"], tags=["t"])
    memory.clear_nowait()
    await cache.set("hit", EXPECTED["hit"], tags=["t"])
    return cache.statistics()


def _with_hits(stats: CacheStatistics, hits: int) -> CacheStatistics:
    """``stats`` as they read after ``hits`` more memory hits on the hot path."""
    first = stats.layers[0]
    return replace(
        stats,
        hits=stats.hits + hits,
        layer_hits={**stats.layer_hits, first.name: stats.layer_hits[first.name] + hits},
        layers=(replace(first, hits=first.hits + hits), *stats.layers[1:]),
    )


@pytest.mark.parametrize("loop", ["asyncio", "trio", "none"])
async def test_calls_from_another_thread_are_refused_and_change_nothing(loop: str) -> None:
    memory = MemoryLayer()
    with anyio.fail_after(60):
        async with CacheStack([memory, MemoryLayer(name="second")]) as cache:
            before = await _fill(cache, memory)
            outcomes = await anyio.to_thread.run_sync(
                call_foreign, cache, loop, abandon_on_cancel=True
            )
            assert refusals(outcomes) == ALL_REFUSED
            assert cache.statistics() == before
            assert cache.state == "open"
            assert memory.statistics().size == 1
            assert await cache.get_many(["hit", "remote", "new", "missing"]) == EXPECTED
    assert cache.state == "closed"


async def test_a_loop_nested_in_the_owner_thread_gets_memory_hits_only(
    anyio_backend_name: str,
) -> None:
    """The hot path checks the thread only: a loop nested in one of the owner's steps
    reads a memory hit (the owner's loop is stopped meanwhile, so the lookup runs alone,
    on the owner's clock); everything else it asks is refused."""
    memory = MemoryLayer()
    nested = "trio" if anyio_backend_name == "asyncio" else "asyncio"
    with anyio.fail_after(60):
        async with CacheStack([memory, MemoryLayer(name="second")]) as cache:
            before = await _fill(cache, memory)
            outcomes = call_foreign(cache, nested)
            assert refusals(outcomes) == {
                **ALL_REFUSED,
                "get of a memory hit": repr(EXPECTED["hit"]),
            }
            assert cache.statistics() == _with_hits(before, 1)
            assert await cache.get_many(["hit", "remote", "new", "missing"]) == EXPECTED
    assert cache.state == "closed"


async def test_a_worker_thread_calls_through_the_owner_loop() -> None:
    """What the refusal points to: ``anyio.from_thread.run`` runs the call on the owner's
    loop, so it is the owner's call."""
    async with CacheStack([MemoryLayer()]) as cache:
        await cache.set("k", 1)

        def worker() -> tuple[object, object]:
            return anyio.from_thread.run(cache.get, "k"), anyio.from_thread.run(cache.set, "k", 2)

        assert await anyio.to_thread.run_sync(worker) == (1, None)
        assert await cache.get("k") == 2


class _OwnClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop with a clock of its own (the stack then calls ``loop.time``)."""

    def time(self) -> float:
        return super().time() + 1000.0


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"loop_factory": _OwnClockLoop}), id="asyncio"),
        pytest.param(("trio", {"clock": trio.testing.MockClock()}), id="trio"),
    ],
)
async def test_statistics_are_read_from_any_thread_on_any_loop_clock() -> None:
    """The stack's clock is the loop's clock object itself, not a look-up of the loop
    running in the calling thread: a metrics exporter's thread reads it too."""
    async with CacheStack([MemoryLayer(ttl=60)]) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        stats = await anyio.to_thread.run_sync(cache.statistics)
        assert stats == cache.statistics()
        assert stats.hits == 1
        assert stats.layers[0].state == "healthy"


async def test_the_refusal_says_who_called_and_who_owns(anyio_backend_name: str) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        owner = threading.current_thread().name
        outcomes: dict[str, object] = {}

        def intrude() -> None:
            outcomes.update(call_foreign(cache, "none"))

        def in_a_named_thread() -> None:
            thread = threading.Thread(target=intrude, name="intruder")
            thread.start()
            thread.join()

        await anyio.to_thread.run_sync(in_a_named_thread)
        assert str(outcomes["set"]).startswith(
            f"CacheStack.set() was called from thread 'intruder', but this CacheStack "
            f"belongs to thread {owner!r}, which entered it"
        )
        nested = "trio" if anyio_backend_name == "asyncio" else "asyncio"
        message = str(call_foreign(cache, nested)["clear"])
        assert message.startswith("CacheStack.clear() was called from a trio run and an asyncio")
        assert f"belongs to {anyio_backend_name} " in message
