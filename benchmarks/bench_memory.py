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

import argparse
import gc
import importlib
import importlib.metadata
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import cachetools
from _machine import describe
from _results import Comparison, Report, Table, Verdict, capture_stdout, ratio

from layercache import CacheStack, MemoryLayer

BACKENDS = ("asyncio", "trio")
TTL = 60.0
"""Seconds every contender stores its entries for: long enough that none expires during
the run, and set so that each one's expiry check is on the measured path."""

LAYERCACHE = "layercache CacheStack.get"
CACHETOOLS_INDEX = "cachetools TTLCache[k] (async def)"
CACHETOOLS_GET = "cachetools TTLCache.get (async def)"
CASHEWS = 'cashews Cache setup("mem://")'
AIOCACHE = "aiocache SimpleMemoryCache"

Getter = Callable[[str], Awaitable[object]]
"""One contender's lookup: ``await get(key)`` returns the value stored under ``key``."""


# -- the contenders ----------------------------------------------------------------------


async def start_layercache(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    cache = CacheStack([MemoryLayer(ttl=TTL, max_size=10 * len(items))])
    await stack.enter_async_context(cache)
    await cache.set_many(items)
    return cache.get


async def start_dict(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    data = dict(items)

    async def get(key: str) -> object:
        return data.get(key)

    return get


async def start_cachetools_index(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(10 * len(items), TTL)
    cache.update(items)

    async def get(key: str) -> object:
        try:
            return cache[key]
        except KeyError:
            return None

    return get


async def start_cachetools_get(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(10 * len(items), TTL)
    cache.update(items)

    async def get(key: str) -> object:
        return cache.get(key)

    return get


async def start_cashews(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    from cashews import Cache

    cache = Cache()
    cache.setup(f"mem://?size={10 * len(items)}")
    stack.push_async_callback(cache.close)
    for key, value in items.items():
        await cache.set(key, value, expire=TTL)
    return cache.get


async def start_cashews_backend(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    from cashews.backends.memory import Memory

    backend = Memory(size=10 * len(items))
    await backend.init()
    stack.push_async_callback(backend.close)
    for key, value in items.items():
        await backend.set(key, value, expire=TTL)
    return backend.get


async def _start_aiocache(
    stack: AsyncExitStack, items: Mapping[str, str], **options: object
) -> Getter:
    # aiocache ships no type information; the module is used as Any on purpose.
    aiocache: Any = importlib.import_module("aiocache")
    cache = aiocache.SimpleMemoryCache(**options)
    stack.push_async_callback(cache.close)
    stack.push_async_callback(cache.clear)  # runs first: cancels the per-key TTL timers
    for key, value in items.items():
        await cache.set(key, value, ttl=TTL)
    get: Getter = cache.get
    return get


async def start_aiocache(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    return await _start_aiocache(stack, items)


async def start_aiocache_no_timeout(stack: AsyncExitStack, items: Mapping[str, str]) -> Getter:
    return await _start_aiocache(stack, items, timeout=None)


@dataclass(frozen=True)
class Contender:
    name: str
    start: Callable[[AsyncExitStack, Mapping[str, str]], Awaitable[Getter]]
    note: str
    foreign: bool = False
    """A peer that may not run on every backend: a failure to start is reported, not raised."""


CONTENDERS = (
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


@dataclass
class Latency:
    """Per-call nanoseconds of each timed batch of one contender on one backend."""

    name: str
    backend: str
    note: str
    samples: list[float] = field(default_factory=list)
    unsupported: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


async def _start(
    contender: Contender, items: Mapping[str, str], outer: AsyncExitStack
) -> Getter | str:
    """Start ``contender`` and check every key is a hit; a foreign peer that cannot run
    here yields the error it raised instead of a getter."""
    stack = AsyncExitStack()
    try:
        get = await contender.start(stack, items)
        found = {key: await get(key) for key in items}
    except Exception as error:
        if not contender.foreign:
            raise
        try:
            await stack.aclose()
        except Exception:
            pass  # it could not start on this backend; it cannot stop on it either
        return f"{type(error).__name__}: {error}"
    await outer.enter_async_context(stack)
    wrong = [key for key, value in found.items() if value != items[key]]
    if wrong:
        raise RuntimeError(f"{contender.name} does not return what was stored, e.g. {wrong[0]!r}")
    return get


async def time_batch(get: Getter, keys: Sequence[str]) -> int:
    start = time.perf_counter_ns()
    for key in keys:
        await get(key)
    return time.perf_counter_ns() - start


async def measure_latency(backend: str, runs: int, batch: int, key_count: int) -> list[Latency]:
    items = {f"key:{i}": f"value:{i}" for i in range(key_count)}
    keys = list(items)
    batch_keys = [keys[i % key_count] for i in range(batch)]
    results: list[Latency] = []
    running: list[tuple[Latency, Getter]] = []
    async with AsyncExitStack() as outer:
        for contender in CONTENDERS:
            result = Latency(contender.name, backend, contender.note)
            results.append(result)
            with warnings.catch_warnings():
                # A peer that fails on trio drops the coroutine it meant to schedule on
                # asyncio; the "never awaited" warning that follows is that failure.
                warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
                started = await _start(contender, items, outer)
                gc.collect()
            if isinstance(started, str):
                result.unsupported = started
            else:
                running.append((result, started))
        for _, get in running:  # warm-up: one untimed batch each
            await time_batch(get, batch_keys)
        for run in range(runs):
            # Rotate who goes first, so no contender always follows the same one.
            shift = run % len(running)
            for result, get in running[shift:] + running[:shift]:
                gc.collect()
                # Background tasks (cashews sweeps its store every second) run here, not
                # inside a batch.
                await anyio.lowlevel.checkpoint()
                result.samples.append(await time_batch(get, batch_keys) / batch)
    return results


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

LIBRARIES = ("layercache", "anyio", "trio", "cachetools", "cashews", "aiocache")


def print_machine() -> None:
    print("Machine")
    for label, value in describe(LIBRARIES):
        print(f"  {label + ':':<12}{value}")
    print()


def print_latency(results: Sequence[Latency], runs: int, batch: int, key_count: int) -> None:
    print(
        f"L1 hit latency: median over {runs} runs of {batch:,} awaited gets "
        f"({key_count:,} keys in rotation, one task)"
    )
    header = (
        f"  {'implementation':<42} {'backend':<8} {'median ns/get':>13} "
        f"{'min-max ns':>13}  {'peer/layercache':>15}  note"
    )
    print(header)
    print("  " + "-" * (len(header) - 2 + 26))
    for backend in BACKENDS:
        reference = _find(results, LAYERCACHE, backend).median
        for result in results:
            if result.backend != backend:
                continue
            if result.unsupported is not None:
                print(
                    f"  {result.name:<42} {backend:<8} {'-':>13} {'-':>13}  {'-':>15}  "
                    f"does not run on {backend}: {result.unsupported}"
                )
                continue
            spread = f"{min(result.samples):.0f}-{max(result.samples):.0f}"
            print(
                f"  {result.name:<42} {backend:<8} {result.median:>13.1f} {spread:>13}  "
                f"{result.median / reference:>14.2f}x  {result.note}"
            )
    print()


def print_memory(results: Sequence[Footprint]) -> None:
    first = results[0]
    print(
        f"Memory per entry at {first.entries:,} entries (tracemalloc; keys 'key:<i>', "
        "values 'value:<i>', both str)"
    )
    print("  " + _baseline(first))
    header = (
        f"  {'structure':<28} {'backend':<8} {'ttl':>5} {'total bytes':>13} "
        f"{'overhead B/entry':>17} {'vs bare objects':>16}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for result in results:
        ttl = "None" if result.ttl is None else f"{result.ttl:g}"
        print(
            f"  {result.name:<28} {result.backend:<8} {ttl:>5} {result.total:>13,} "
            f"{result.overhead:>17.1f} {result.overhead_vs_objects:>16.1f}"
        )
    print(
        "  overhead = (total - baseline) / entries; 'vs bare objects' also counts the "
        "8 bytes per key and per value the baseline list spends on pointers"
    )
    for line in _not_counted(results):
        print("  " + line)
    print()


def _baseline(result: Footprint) -> str:
    return (
        f"baseline: the same keys and values in one plain list = {result.plain:,} bytes "
        f"({result.plain / result.entries:.1f} per entry, of which the list itself "
        f"{result.plain_list / result.entries:.1f})"
    )


def _not_counted(results: Sequence[Footprint]) -> list[str]:
    return [
        f"not counted above: the running stack before its first entry "
        f"({result.backend}, ttl={result.ttl}) = {result.empty:,} bytes"
        for result in results
        if result.empty is not None
    ]


def latency_table(results: Sequence[Latency], runs: int, batch: int, key_count: int) -> Table:
    """Each implementation once, its figures on asyncio and trio side by side."""
    rows: list[tuple[str, ...]] = []
    errors: dict[str, str] = {}
    for contender in CONTENDERS:
        row = [contender.name, contender.note]
        for backend in BACKENDS:
            result = _find(results, contender.name, backend)
            if result.unsupported is not None:
                row += ["does not run", "-"]
                errors.setdefault(backend, result.unsupported)
                continue
            reference = _find(results, LAYERCACHE, backend).median
            row += [
                f"{result.median:.1f} ({min(result.samples):.0f}-{max(result.samples):.0f})",
                ratio(result.median, reference),
            ]
        rows.append(tuple(row))
    note = (
        "ns/get: the median over the runs of each batch's mean time per get, and the "
        "spread (min-max) of those batch means. peer ÷ layercache: the row's median ÷ "
        "layercache's on the same backend, in the same run; above 1.00x, layercache was "
        "faster."
    )
    for backend, error in errors.items():
        note += f" On {backend}, the peers that do not run raise `{error}`."
    columns = ["implementation", "note"]
    for backend in BACKENDS:
        columns += [f"{backend} ns/get (min-max)", f"{backend} peer ÷ layercache"]
    title = (
        f"L1 hit latency: median over {runs} runs of {batch:,} awaited gets "
        f"({key_count:,} keys in rotation, one task)"
    )
    return Table(title, tuple(columns), tuple(rows), note)


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
            *(line.capitalize() + "." for line in _not_counted(results)),
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


def comparisons(latency: Sequence[Latency]) -> list[Comparison]:
    """layercache's speed-up over every other contender that ran, for the chart."""
    found: list[Comparison] = []
    for backend in BACKENDS:
        ours = _find(latency, LAYERCACHE, backend).median
        index = _find(latency, CACHETOOLS_INDEX, backend).median
        dotget = _find(latency, CACHETOOLS_GET, backend).median
        goals = {
            # The target is checked against the faster TTLCache spelling.
            CACHETOOLS_INDEX if index <= dotget else CACHETOOLS_GET: 1.0,
            **({CASHEWS: 5.0, AIOCACHE: 20.0} if backend == "asyncio" else {}),
        }
        for result in latency:
            if result.backend != backend or result.name == LAYERCACHE:
                continue
            if result.unsupported is None:
                speedup = result.median / ours
                found.append(
                    Comparison("L1 hit", result.name, backend, speedup, goals.get(result.name))
                )
    return found


def _find(results: Sequence[Latency], name: str, backend: str) -> Latency:
    for result in results:
        if result.name == name and result.backend == backend:
            return result
    raise LookupError(name, backend)


def targets(latency: Sequence[Latency], memory: Sequence[Footprint]) -> list[Verdict]:
    """One verdict per DESIGN §5 target and backend: PASS, FAIL or n/a (with why)."""
    verdicts: list[Verdict] = []
    for backend in BACKENDS:
        ours = _find(latency, LAYERCACHE, backend).median
        index = _find(latency, CACHETOOLS_INDEX, backend).median
        dotget = _find(latency, CACHETOOLS_GET, backend).median
        # The stricter reading: the faster of the two natural ways to look up a TTLCache.
        target = min(index, dotget)
        verdicts.append(
            Verdict.check(
                "l1-vs-cachetools",
                ours <= target,
                backend,
                "L1 hit median <= cachetools.TTLCache lookup in an async def",
                f"layercache {ours:.1f} ns vs {target:.1f} ns "
                f"(TTLCache[k] {index:.1f} ns = {index / ours:.2f}x, "
                f"TTLCache.get {dotget:.1f} ns = {dotget / ours:.2f}x)",
            )
        )
        for target_id, name, factor in (
            ("l1-vs-cashews", CASHEWS, 5.0),
            ("l1-vs-aiocache", AIOCACHE, 20.0),
        ):
            peer = _find(latency, name, backend)
            goal = f">= {factor:g}x faster than {name}"
            if peer.unsupported is not None:
                verdicts.append(
                    Verdict(
                        target_id,
                        "n/a",
                        backend,
                        goal,
                        f"it does not run on {backend} ({peer.unsupported}); DESIGN §5 sets "
                        "this target on asyncio only",
                    )
                )
                continue
            speedup = peer.median / ours
            verdicts.append(
                Verdict.check(
                    target_id,
                    speedup >= factor,
                    backend,
                    goal,
                    f"{peer.median:.1f} ns vs {ours:.1f} ns = {speedup:.2f}x",
                )
            )
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


def measure_and_print(settings: Settings) -> tuple[list[Latency], list[Footprint]]:
    """Everything the script measures, printed as it prints it; the results."""
    print_machine()
    started = time.perf_counter()
    latency: list[Latency] = []
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
    print_latency(latency, settings.runs, settings.batch, settings.keys)
    print_memory(memory)
    print("DESIGN §5 targets")
    for verdict in targets(latency, memory):
        print("  " + verdict.line)
    print(f"\n(measured in {time.perf_counter() - started:.0f} s)")
    return latency, memory


TITLE = "L1 hit latency and memory per entry"


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    settings = Settings.default(quick)
    with capture_stdout() as printed:
        latency, memory = measure_and_print(settings)
    return Report(
        title=TITLE,
        tables=(
            latency_table(latency, settings.runs, settings.batch, settings.keys),
            memory_table(memory),
        ),
        verdicts=tuple(targets(latency, memory)),
        comparisons=tuple(comparisons(latency)),
        settings=(
            f"{settings.runs} runs of {settings.batch:,} gets over {settings.keys:,} keys; "
            f"memory at {settings.entries:,} entries"
        ),
        output=printed.text,
    )


# -- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="2 short runs: a smoke test")
    parser.add_argument("--runs", type=int, help="timed batches per contender (default 15)")
    parser.add_argument("--batch", type=int, help="awaited gets per batch (default 20000)")
    parser.add_argument("--keys", type=int, default=1000, help="keys in rotation (1000)")
    parser.add_argument(
        "--entries", type=int, help="entries for the memory figure (100000; 10000 with --quick)"
    )
    options = parser.parse_args(argv)
    defaults = Settings.default(options.quick)
    measure_and_print(
        Settings(
            runs=options.runs or defaults.runs,
            batch=options.batch or defaults.batch,
            keys=options.keys,
            entries=options.entries or defaults.entries,
        )
    )


if __name__ == "__main__":
    main()
