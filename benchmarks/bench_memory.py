"""Benchmark: the memory layer's hit latency and its memory per entry (DESIGN.md §5).

Two measurements, each on asyncio and on trio (a peer that cannot run on a backend is
tried there anyway, and reported as not running, with the error it raised):

1. **L1 hit latency** of ``await cache.get(key)`` on a warm ``CacheStack([MemoryLayer(ttl=60)])``
   against a plain dict and ``cachetools.TTLCache`` wrapped in an ``async def``, cashews'
   memory backend and aiocache's ``SimpleMemoryCache``. Each contender gets the same
   1 000 keys (every lookup is checked to be a hit first) and is timed over a batch of
   awaited gets in one task; the contenders take turns, batch after batch, so their
   ratios come from the same minutes of the same process. The figure is the median
   over the runs of each batch's mean time per call.
2. **Memory per entry** with ``tracemalloc``: a stack holding 100 000 entries written
   through ``set_many``, minus the same keys and values held in one plain list.

Run from the repository root (nothing here touches the network)::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_memory.py           # about half a minute
    .venv/bin/python benchmarks/bench_memory.py --quick   # a few seconds: a smoke test
"""

from __future__ import annotations

import gc
import importlib
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import cachetools
from _harness import (
    BACKENDS,
    LATENCY,
    LAYERCACHE,
    Contender,
    Samples,
    check_values,
    command_line,
    find,
    mean_ns,
    measure_and_print,
    peers_that_ran,
    print_machine,
    side_by_side,
    start_contenders,
    take_turns,
)
from _results import Comparison, Report, Table, Verdict

from layercache import CacheStack, MemoryLayer

TTL = 60.0
"""Seconds every contender stores its entries for: long enough that none expires during
the run, and set so that each one's expiry check is on the measured path."""

CACHETOOLS_INDEX = "cachetools TTLCache[k] (async def)"
CACHETOOLS_GET = "cachetools TTLCache.get (async def)"
CASHEWS = 'cashews Cache setup("mem://")'
AIOCACHE = "aiocache SimpleMemoryCache"
LIBRARIES = ("layercache", "anyio", "trio", "cachetools", "cashews", "aiocache")

Items = Mapping[str, str]
Getter = Callable[[str], Awaitable[object]]
"""One contender's lookup: ``await get(key)`` returns the value stored under ``key``."""


# -- the contenders ----------------------------------------------------------------------


async def start_layercache(stack: AsyncExitStack, items: Items) -> Getter:
    cache = CacheStack([MemoryLayer(ttl=TTL, max_size=10 * len(items))])
    await stack.enter_async_context(cache)
    await cache.set_many(items)
    return cache.get


async def start_dict(stack: AsyncExitStack, items: Items) -> Getter:
    data = dict(items)

    async def get(key: str) -> object:
        return data.get(key)

    return get


async def start_cachetools_index(stack: AsyncExitStack, items: Items) -> Getter:
    cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(10 * len(items), TTL)
    cache.update(items)

    async def get(key: str) -> object:
        try:
            return cache[key]
        except KeyError:
            return None

    return get


async def start_cachetools_get(stack: AsyncExitStack, items: Items) -> Getter:
    cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(10 * len(items), TTL)
    cache.update(items)

    async def get(key: str) -> object:
        return cache.get(key)

    return get


async def start_cashews(stack: AsyncExitStack, items: Items) -> Getter:
    from cashews import Cache

    cache = Cache()
    cache.setup(f"mem://?size={10 * len(items)}")
    stack.push_async_callback(cache.close)
    for key, value in items.items():
        await cache.set(key, value, expire=TTL)
    return cache.get


async def start_cashews_backend(stack: AsyncExitStack, items: Items) -> Getter:
    from cashews.backends.memory import Memory

    backend = Memory(size=10 * len(items))
    await backend.init()
    stack.push_async_callback(backend.close)
    for key, value in items.items():
        await backend.set(key, value, expire=TTL)
    return backend.get


async def _start_aiocache(stack: AsyncExitStack, items: Items, **options: object) -> Getter:
    # aiocache ships no type information; the module is used as Any on purpose.
    aiocache: Any = importlib.import_module("aiocache")
    cache = aiocache.SimpleMemoryCache(**options)
    stack.push_async_callback(cache.close)
    stack.push_async_callback(cache.clear)  # runs first: cancels the per-key TTL timers
    for key, value in items.items():
        await cache.set(key, value, ttl=TTL)
    get: Getter = cache.get
    return get


async def start_aiocache(stack: AsyncExitStack, items: Items) -> Getter:
    return await _start_aiocache(stack, items)


async def start_aiocache_no_timeout(stack: AsyncExitStack, items: Items) -> Getter:
    return await _start_aiocache(stack, items, timeout=None)


CONTENDERS: tuple[Contender[Items, Getter], ...] = (
    Contender(LAYERCACHE, start_layercache, "MemoryLayer(ttl=60)"),
    Contender("dict.get (async def)", start_dict, "floor: no TTL, no LRU"),
    Contender(CACHETOOLS_INDEX, start_cachetools_index, "target; try/except KeyError"),
    Contender(CACHETOOLS_GET, start_cachetools_get, "target, the .get spelling"),
    Contender(CASHEWS, start_cashews, "peer; default middlewares", foreign=True),
    Contender(
        "cashews Memory backend .get", start_cashews_backend, "info: no Cache wrapper", foreign=True
    ),
    Contender(AIOCACHE, start_aiocache, "peer; default timeout=5", foreign=True),
    Contender(
        "aiocache SimpleMemoryCache(timeout=None)",
        start_aiocache_no_timeout,
        "info: no asyncio.wait_for",
        foreign=True,
    ),
)


# -- latency ------------------------------------------------------------------------------


async def measure_latency(backend: str, runs: int, batch: int, key_count: int) -> list[Samples]:
    """Per-call nanoseconds of each timed batch, per contender."""
    items = {f"key:{i}": f"value:{i}" for i in range(key_count)}
    keys = list(items)
    batch_keys = [keys[i % key_count] for i in range(batch)]

    async def every_key_hits(name: str, get: Getter) -> None:
        check_values(name, {key: await get(key) for key in items}, items)

    async with AsyncExitStack() as outer:
        measured, running = await start_contenders(
            CONTENDERS, items, outer, backend, every_key_hits
        )
        timed = [(s.values, partial(mean_ns, get, batch_keys)) for s, get in running[LATENCY]]
        for _, one_batch in timed:  # warm-up: one untimed batch each
            await one_batch()
        for run in range(runs):
            await take_turns(run, timed)
    return measured


# -- memory -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    name: str
    backend: str
    ttl: float | None
    entries: int
    total: int
    """Bytes traced while the structure holds every entry (keys and values included)."""
    plain: int
    """Bytes of the same keys and values held in one plain list."""
    plain_list: int
    """Of ``plain``, the bytes of the list object itself (its pointer array)."""
    empty: int | None = None
    """Bytes of the running stack before its first entry (not part of ``total``)."""

    @property
    def overhead(self) -> float:
        return (self.total - self.plain) / self.entries

    @property
    def overhead_vs_objects(self) -> float:
        """Overhead against the bare key and value objects, without the list's pointers."""
        return (self.total - (self.plain - self.plain_list)) / self.entries


def _key(i: int) -> str:
    return f"key:{i}"


def _value(i: int) -> str:
    return f"value:{i}"


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _plain_bytes(entries: int) -> tuple[int, int]:
    """Bytes of the keys and values in one exactly sized list, and of that list alone."""
    before = _traced()
    held: list[str | None] = [None] * (2 * entries)
    for i in range(entries):
        held[2 * i] = _key(i)
        held[2 * i + 1] = _value(i)
    total = _traced() - before
    list_bytes = sys.getsizeof(held)
    del held
    return total, list_bytes


async def measure_memory(
    backend: str, entries: int, chunk: int, references: bool
) -> list[Footprint]:
    results: list[Footprint] = []
    tracemalloc.start()
    try:
        plain, plain_list = _plain_bytes(entries)

        def record(
            name: str, ttl: float | None, total: int, where: str = backend, empty: int | None = None
        ) -> None:
            results.append(Footprint(name, where, ttl, entries, total, plain, plain_list, empty))

        for ttl in (TTL, None):
            layer = MemoryLayer(ttl=ttl, max_size=entries)
            before_start = _traced()
            async with CacheStack([layer]) as cache:
                before = _traced()  # the running, empty stack is a fixed cost, not counted
                empty = before - before_start
                for start in range(0, entries, chunk):
                    end = min(entries, start + chunk)
                    await cache.set_many({_key(i): _value(i) for i in range(start, end)})
                total = _traced() - before
                if len(layer) != entries:
                    raise RuntimeError(f"the layer holds {len(layer)} entries, not {entries}")
            record(LAYERCACHE, ttl, total, empty=empty)

        if references:  # the same keys and values in synchronous structures, for scale
            before = _traced()
            data = {_key(i): _value(i) for i in range(entries)}
            record("dict", None, _traced() - before, "-")
            del data
            before = _traced()
            ttl_cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(entries, TTL)
            for i in range(entries):
                ttl_cache[_key(i)] = _value(i)
            record("cachetools TTLCache", TTL, _traced() - before, "-")
            del ttl_cache
    finally:
        tracemalloc.stop()
    return results


# -- reporting ----------------------------------------------------------------------------


def _baseline(result: Footprint) -> str:
    return (
        f"baseline: the same keys and values in one plain list = {result.plain:,} bytes "
        f"({result.plain / result.entries:.1f} per entry, of which the list itself "
        f"{result.plain_list / result.entries:.1f})"
    )


def latency_table(measured: Sequence[Samples], settings: Settings) -> Table:
    """Each implementation once, its figures on asyncio and trio side by side."""
    return side_by_side(
        f"L1 hit latency: median over {settings.runs} runs of {settings.batch:,} awaited gets "
        f"({settings.keys:,} keys in rotation, one task)",
        CONTENDERS,
        measured,
        LATENCY,
        ("ns/get (min-max)", "peer ÷ layercache"),
        Samples.figure,
        "ns/get: the median over the runs of each batch's mean time per get, and the "
        "spread (min-max) of those batch means. peer ÷ layercache: the row's median ÷ "
        "layercache's on the same backend, in the same run; above 1.00x, layercache was "
        "faster.",
    )


def memory_table(results: Sequence[Footprint]) -> Table:
    rows = tuple(
        (
            result.name,
            result.backend,
            "None" if result.ttl is None else f"{result.ttl:g}",
            f"{result.total:,}",
            f"{result.overhead:.1f}",
            f"{result.overhead_vs_objects:.1f}",
        )
        for result in results
    )
    note = " ".join(
        [
            _baseline(results[0]) + ".",
            "Overhead = (total - baseline) / entries; *vs bare objects* also counts the 8 "
            "bytes per key and per value the baseline list spends on pointers.",
            *(
                f"Not counted above: the running stack before its first entry "
                f"({result.backend}, ttl={result.ttl}) = {result.empty:,} bytes."
                for result in results
                if result.empty is not None
            ),
        ]
    )
    columns = (
        "structure",
        "backend",
        "ttl",
        "total bytes",
        "overhead B/entry",
        "vs bare objects B/entry",
    )
    title = f"Memory per entry at {results[0].entries:,} entries (tracemalloc)"
    return Table(title, columns, rows, note)


def comparisons(latency: Sequence[Samples]) -> list[Comparison]:
    """layercache's speed-up over every other contender that ran, for the chart."""
    found: list[Comparison] = []
    for backend in BACKENDS:
        index = find(latency, CACHETOOLS_INDEX, backend).median
        dotget = find(latency, CACHETOOLS_GET, backend).median
        goals = {
            # The target is checked against the faster TTLCache spelling.
            CACHETOOLS_INDEX if index <= dotget else CACHETOOLS_GET: 1.0,
            **({CASHEWS: 5.0, AIOCACHE: 20.0} if backend == "asyncio" else {}),
        }
        for peer, speedup in peers_that_ran(latency, backend):
            found.append(Comparison("L1 hit", peer.name, backend, speedup, goals.get(peer.name)))
    return found


def _latency_targets(latency: Sequence[Samples], backend: str) -> list[Verdict]:
    ours = find(latency, LAYERCACHE, backend).median
    index = find(latency, CACHETOOLS_INDEX, backend).median
    dotget = find(latency, CACHETOOLS_GET, backend).median
    # The stricter reading: the faster of the two natural ways to look up a TTLCache.
    target = min(index, dotget)
    verdicts = [
        Verdict.check(
            "l1-vs-cachetools",
            ours <= target,
            backend,
            "L1 hit median <= cachetools.TTLCache lookup in an async def",
            f"layercache {ours:.1f} ns vs {target:.1f} ns "
            f"(TTLCache[k] {index:.1f} ns = {index / ours:.2f}x, "
            f"TTLCache.get {dotget:.1f} ns = {dotget / ours:.2f}x)",
        )
    ]
    for target_id, name, factor in (
        ("l1-vs-cashews", CASHEWS, 5.0),
        ("l1-vs-aiocache", AIOCACHE, 20.0),
    ):
        peer = find(latency, name, backend)
        goal = f">= {factor:g}x faster than {name}"
        if peer.unsupported is not None:
            measured = (
                f"it does not run on {backend} ({peer.unsupported}); DESIGN §5 sets "
                "this target on asyncio only"
            )
            verdicts.append(Verdict(target_id, "n/a", backend, goal, measured))
            continue
        speedup = peer.median / ours
        measured = f"{peer.median:.1f} ns vs {ours:.1f} ns = {speedup:.2f}x"
        verdicts.append(Verdict.check(target_id, speedup >= factor, backend, goal, measured))
    return verdicts


def targets(latency: Sequence[Samples], memory: Sequence[Footprint]) -> list[Verdict]:
    """One verdict per DESIGN §5 target and backend: PASS, FAIL or n/a (with why)."""
    verdicts = [v for backend in BACKENDS for v in _latency_targets(latency, backend)]
    for result in memory:
        if result.name != LAYERCACHE:
            continue
        verdicts.append(
            Verdict.check(
                "memory",
                result.overhead <= 300,
                result.backend,
                f"memory <= 300 B of overhead per small entry at {result.entries:,} "
                f"(ttl={result.ttl})",
                f"{result.overhead:.1f} B ({result.overhead_vs_objects:.1f} B against the bare "
                "objects)",
            )
        )
    return verdicts


# -- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    runs: int
    """Timed batches per contender."""
    batch: int
    """Awaited gets per batch."""
    keys: int = 1_000
    """Keys in rotation."""
    entries: int = 100_000
    """Entries for the memory figure."""

    @classmethod
    def default(cls, quick: bool) -> Settings:
        if quick:  # a smoke test: figures too noisy to read
            return cls(runs=2, batch=1_000, entries=10_000)
        return cls(runs=15, batch=20_000)


def measure(settings: Settings) -> Report:
    """Everything the script measures, as a report."""
    print_machine(LIBRARIES)
    latency: list[Samples] = []
    memory: list[Footprint] = []
    for backend in BACKENDS:
        latency += anyio.run(
            measure_latency, backend, settings.runs, settings.batch, settings.keys, backend=backend
        )
    for backend in BACKENDS:
        references = backend == BACKENDS[-1]
        memory += anyio.run(
            measure_memory, backend, settings.entries, 1_000, references, backend=backend
        )
    return Report(
        title=TITLE,
        tables=(latency_table(latency, settings), memory_table(memory)),
        verdicts=tuple(targets(latency, memory)),
        comparisons=tuple(comparisons(latency)),
        settings=(
            f"{settings.runs} runs of {settings.batch:,} gets over {settings.keys:,} keys; "
            f"memory at {settings.entries:,} entries"
        ),
    )


TITLE = "L1 hit latency and memory per entry"


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    return measure_and_print(partial(measure, Settings.default(quick)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(__doc__)
    parser.add_argument("--quick", action="store_true", help="2 short runs: a smoke test")
    parser.add_argument("--runs", type=int, help="timed batches per contender (default 15)")
    parser.add_argument("--batch", type=int, help="awaited gets per batch (default 20000)")
    parser.add_argument("--keys", type=int, default=1000, help="keys in rotation (1000)")
    parser.add_argument(
        "--entries", type=int, help="entries for the memory figure (100000; 10000 with --quick)"
    )
    options = parser.parse_args(argv)
    defaults = Settings.default(options.quick)
    settings = Settings(
        runs=options.runs or defaults.runs,
        batch=options.batch or defaults.batch,
        keys=options.keys,
        entries=options.entries or defaults.entries,
    )
    measure_and_print(partial(measure, settings))


if __name__ == "__main__":
    main()
