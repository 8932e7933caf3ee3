"""Benchmark: stale and early hits, a hot key across its expiry, the origin down (DESIGN.md §5).

Three measurements, each on asyncio and on trio (a peer that cannot run on a backend is
tried there anyway, and reported as not running, with the error it raised). Every stack
is memory-only, ``CacheStack([MemoryLayer()])``: what is measured is the freshness logic,
and a Redis layer would add its round trips to the calls that reach it, nothing else.

1. **Stale and early hits against a fresh hit**: four stacks hold the same 50 keys, each
   in one state put there by an injected clock (``layercache.testing.FakeClock``) that does
   not move during the runs: fresh, early (past ``refresh_ahead``), stale (past the TTL,
   within ``stale_while_revalidate``), and fresh without ``Freshness`` for scale. Each
   early or stale key's refresh is started before the runs with a fetcher that never
   completes, so it stays registered and every timed get takes the path its row names;
   the statistics are checked after the runs. Batches of ``await cache.get(key, fetcher)``
   take turns; the figure is the median over the runs of each batch's mean.
2. **A hot key across its expiry**: 200 readers call ``get`` on one key, each pausing
   between calls, from the moment it was fetched until four origin latencies past its TTL:
   p50 and p99 of every call, and origin calls, per window (median over the windows), for
   layercache without freshness, with stale-while-revalidate and with refresh-ahead, and
   for cashews' ``early`` and ``soft`` and aiocache's ``cached_stampede``. The reference is
   layercache on a key that does not expire in the window: fresh hits under the same load.
3. **The origin down** for 10 s (1 s with ``--quick``): 50 readers over 20 keys fetched
   while it was up, their entries expiring all through the outage; caller errors and
   origin calls per key, for layercache with and without ``stale_if_error``, cashews'
   ``soft`` and ``early``, and aiocache. Counts, not times: the contenders run at once.

Run from the repository root (nothing here touches the network)::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_freshness.py           # about a minute and a quarter
    .venv/bin/python benchmarks/bench_freshness.py --quick   # a few seconds: a smoke test
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from _harness import (
    BACKENDS,
    LATENCY,
    Contender,
    Samples,
    check_values,
    command_line,
    find,
    mean_ns_fetching,
    measure_and_print,
    per_backend,
    print_machine,
    rotated,
    side_by_side,
    start_contenders,
    take_turns,
)
from _results import Comparison, Report, Table, Verdict

from layercache import CacheStack, CacheStatistics, Freshness, MemoryLayer
from layercache._demo._report import Traffic, steady_traffic
from layercache.testing import FakeClock

TITLE = "Freshness: stale and early hits, a hot key's expiry, the origin down"
LIBRARIES = ("layercache", "anyio", "trio", "cashews", "aiocache")
Items = Mapping[str, str]


# -- the origin ---------------------------------------------------------------------------


class Origin:
    """A stand-in database: ``latency`` seconds per query, or, while ``down``, an error at
    once; queries counted per key, and those that failed."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.down = False
        self.queries: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.queries.values())

    async def query(self, key: str) -> str:
        self.queries[key] += 1
        if self.down:
            self.failed[key] += 1
            raise ConnectionError("the origin is down")
        await anyio.sleep(self.latency)
        return f"{key}:{self.queries[key]}"


Read = Callable[[str], Awaitable[object]]


@dataclass(frozen=True)
class Keyed:
    """A contender of measurements 2 and 3: ``read(key)`` goes through its cache to its
    own origin."""

    origin: Origin
    read: Read


async def reads_through(name: str, keyed: Keyed) -> None:
    """The probe: a first read fetches, a second finds what the first stored."""
    found = {"fetched": await keyed.read("probe"), "found": await keyed.read("probe")}
    check_values(name, found, {"fetched": "probe:1", "found": "probe:1"})


async def _layercache(
    freshness: Freshness | None, ttl: float, stack: AsyncExitStack, latency: float
) -> Keyed:
    origin = Origin(latency)
    cache = CacheStack([MemoryLayer(ttl=ttl)], freshness=freshness)
    await stack.enter_async_context(cache)
    fetchers: dict[str, Callable[[], Awaitable[str]]] = {}

    def read(key: str) -> Awaitable[object]:
        # No coroutine of its own around get: the call is the stack's, as a caller's is.
        fetcher = fetchers.get(key)
        if fetcher is None:
            fetcher = fetchers[key] = partial(origin.query, key)
        return cache.get(key, fetcher)

    return Keyed(origin, read)


async def _cashews(
    kind: str, ttl: float, stale: float, stack: AsyncExitStack, latency: float
) -> Keyed:
    """cashews' ``early`` (recompute in the background after ``ttl``, the old value served
    until ``ttl + stale``) or ``soft`` (recompute in the caller after ``ttl``, the old value
    on an error until ``ttl + stale``), on its memory backend."""
    from cashews import Cache

    cache = Cache()
    cache.setup("mem://")
    stack.push_async_callback(cache.close)
    origin = Origin(latency)

    async def fetch(key: str) -> str:
        return await origin.query(key)

    if kind == "early":
        decorated = cache.early(ttl=ttl + stale, early_ttl=ttl)(fetch)
    else:
        decorated = cache.soft(ttl=ttl + stale, soft_ttl=ttl)(fetch)
    read: Read = decorated
    return Keyed(origin, read)


async def _aiocache(ttl: float, stack: AsyncExitStack, latency: float) -> Keyed:
    """aiocache's ``cached_stampede``: a lock so that one caller fetches, no stale value."""
    aiocache: Any = importlib.import_module("aiocache")  # no type information: Any
    origin = Origin(latency)

    async def fetch(key: str) -> str:
        return await origin.query(key)

    decorated = aiocache.cached_stampede(ttl=ttl, lease=2)(fetch)
    stack.push_async_callback(decorated.cache.close)
    stack.push_async_callback(decorated.cache.clear)  # runs first: cancels the TTL timers
    read: Read = decorated
    return Keyed(origin, read)


# -- 1. what a stale or early hit costs ---------------------------------------------------

HIT_TTL = 100.0
HIT_FRESHNESS = Freshness(stale_while_revalidate=1000.0, refresh_ahead=0.5, hard_timeout=3600.0)
"""One setting for the stacks in each state: a stale window for the stale one, refresh-ahead
for the early one, and an hour's ``hard_timeout``, so that the refreshes started before the
runs are not cancelled after the 60 s a refresh gets without one."""
FRESH = "fresh hit"
EARLY = "early hit (refresh-ahead)"
STALE = "stale hit (stale-while-revalidate)"
PLAIN = "fresh hit, no Freshness"
AGES = {FRESH: 0.0, EARLY: 0.75 * HIT_TTL, STALE: 1.5 * HIT_TTL, PLAIN: 0.0}
"""How far each stack's clock is moved past the writes: into the state the row names."""


async def never() -> object:
    """The fetcher of every timed get: a refresh running it never completes, so it stays
    registered, and the key's gets are answered as they are while a refresh runs."""
    await anyio.sleep_forever()
    return None


class StateChanged(RuntimeError):
    """The timed gets did not all take the path their row names: the figure is void."""


@dataclass(frozen=True)
class HitPath:
    """A stack whose keys are all in one state, and what its statistics said then."""

    state: str
    cache: CacheStack
    clock: FakeClock
    keys: tuple[str, ...]
    primed: CacheStatistics
    """``statistics()`` once the refreshes were started, before any timed get."""

    def check(self, gets: int) -> None:
        """Raise :class:`StateChanged` unless the ``gets`` made since the priming were all
        hits of this state: no refresh or fetch started, the refreshes still registered, a
        stale hit each (stale) or none, the early entries still fresh and due."""
        now, primed = self.cache.statistics(), self.primed
        made = {
            "hits": now.hits - primed.hits,
            "stale hits": now.stale_hits - primed.stale_hits,
            "refreshes": now.refreshes - primed.refreshes,
            "fetches": now.fetches - primed.fetches,
            "refreshes in flight": now.loads_in_flight,
        }
        expected = {
            "hits": gets,
            "stale hits": gets if self.state == STALE else 0,
            "refreshes": 0,
            "fetches": 0,
            "refreshes in flight": len(self.keys) if self.state in (EARLY, STALE) else 0,
        }
        if made != expected:
            raise StateChanged(f"{self.state}: counted {made}, expected {expected}")
        if self.state == EARLY:
            memory = self.cache.layers[0]
            assert isinstance(memory, MemoryLayer)
            records = memory.get_many_nowait(self.keys).values()
            moment = self.clock()
            if len(records) != len(self.keys) or not all(
                record.is_fresh(moment) and record.is_due(moment) for record in records
            ):
                raise StateChanged(f"{self.state}: the entries are no longer fresh and due")


async def _hit_path(state: str, stack: AsyncExitStack, items: Items) -> HitPath:
    clock = FakeClock()
    freshness = None if state == PLAIN else HIT_FRESHNESS
    cache = CacheStack([MemoryLayer(max_size=10 * len(items))], clock=clock, freshness=freshness)
    await stack.enter_async_context(cache)
    await cache.set_many(items, ttl=HIT_TTL)
    clock.advance(AGES[state])
    for key in items:  # starts each early or stale key's refresh
        await cache.get(key, never)
    await anyio.wait_all_tasks_blocked()  # an early hit's refresh starts after it returns
    return HitPath(state, cache, clock, tuple(items), cache.statistics())


HIT_CONTENDERS: tuple[Contender[Items, HitPath], ...] = (
    Contender(FRESH, partial(_hit_path, FRESH), "the reference: the hot path"),
    Contender(EARLY, partial(_hit_path, EARLY), "fresh, past refresh_ahead; its refresh runs"),
    Contender(STALE, partial(_hit_path, STALE), "past its TTL; its refresh runs"),
    Contender(PLAIN, partial(_hit_path, PLAIN), "info: CacheStack([MemoryLayer()])"),
)


async def measure_hits(backend: str, settings: Settings) -> list[Samples]:
    """Per-get nanoseconds of each timed batch, per state; every state checked after."""
    items = {f"key:{i}": f"value:{i}" for i in range(settings.keys)}
    keys = list(items)
    batch = [keys[i % len(keys)] for i in range(settings.batch)]

    async def every_key_answers(name: str, path: HitPath) -> None:
        check_values(name, {key: await path.cache.get(key, never) for key in keys}, items)

    async with AsyncExitStack() as outer:
        measured, running = await start_contenders(
            HIT_CONTENDERS, items, outer, backend, every_key_answers
        )
        paths = [path for _, path in running[LATENCY]]
        timed = [
            (s.values, partial(mean_ns_fetching, path.cache.get, batch, never))
            for s, path in running[LATENCY]
        ]
        for _, one_batch in timed:  # warm-up: one untimed batch each
            await one_batch()
        for run in range(settings.runs):
            await take_turns(run, timed)
        for path in paths:  # the probe's gets, the warm-up batch and the timed ones
            path.check(len(keys) + settings.batch * (settings.runs + 1))
    return measured


def hits_table(measured: Sequence[Samples], settings: Settings) -> Table:
    return side_by_side(
        f"Hit latency by state: median over {settings.runs} runs of {settings.batch:,} awaited "
        f"`get(key, fetcher)` ({settings.keys} keys in rotation, one task, memory only)",
        HIT_CONTENDERS,
        measured,
        LATENCY,
        ("ns/get (min-max)", "row ÷ fresh hit"),
        Samples.figure,
        "ns/get: the median over the runs of each batch's mean time per get, and the spread "
        "(min-max) of those batch means. row ÷ fresh hit: the row's median ÷ the fresh hit's "
        "on the same backend, in the same run; above 1.00x, the row is the slower. Checked "
        "after the runs, from each stack's statistics: every get was a hit of its row's state, "
        "no refresh or fetch started during the runs.",
        reference=FRESH,
    )


def hits_targets(measured: Sequence[Samples]) -> list[Verdict]:
    verdicts = []
    for backend in BACKENDS:
        fresh = find(measured, FRESH, backend).median
        for state in (STALE, EARLY):
            ours = find(measured, state, backend).median
            verdicts.append(
                Verdict.check(
                    "stale-hit",
                    ours <= 1.2 * fresh,
                    backend,
                    f"{state} <= 1.2x a fresh L1 hit",
                    f"{ours:.0f} ns vs {fresh:.0f} ns = {ours / fresh:.2f}x",
                )
            )
    return verdicts


# -- 2. a hot key across its expiry -------------------------------------------------------

P50, P99, QUERIES = "p50", "p99", "origin calls"
HOT_KINDS = (P50, P99, QUERIES)
STALE_WINDOW = 60.0
"""Seconds an expired entry may still be served (stale-while-revalidate; cashews' ``ttl``
past its ``early_ttl`` or ``soft_ttl``)."""
HOT_FRESH = "layercache, a fresh key"
HOT_SWR = "layercache, stale-while-revalidate"
CASHEWS_EARLY = "cashews @cache.early"
CASHEWS_SOFT = "cashews @cache.soft"
AIOCACHE = "aiocache @cached_stampede"


def _hot_contenders(ttl: float) -> tuple[Contender[float, Keyed], ...]:
    """The contenders of measurement 2 for a TTL of ``ttl`` (their argument is the origin's
    latency)."""
    swr = Freshness(stale_while_revalidate=STALE_WINDOW)
    return (
        Contender(
            HOT_FRESH, partial(_layercache, swr, 3600.0), "the reference: no expiry", HOT_KINDS
        ),
        Contender(
            "layercache, no freshness", partial(_layercache, None, ttl), "single-flight", HOT_KINDS
        ),
        Contender(HOT_SWR, partial(_layercache, swr, ttl), "stale_while_revalidate=60", HOT_KINDS),
        Contender(
            "layercache, refresh-ahead",
            partial(_layercache, Freshness(refresh_ahead=0.5), ttl),
            "refresh_ahead=0.5",
            HOT_KINDS,
        ),
        Contender(
            CASHEWS_EARLY,
            partial(_cashews, "early", ttl, STALE_WINDOW),
            "early_ttl=TTL: background recompute",
            HOT_KINDS,
            foreign=True,
        ),
        Contender(
            CASHEWS_SOFT,
            partial(_cashews, "soft", ttl, STALE_WINDOW),
            "soft_ttl=TTL: the caller recomputes",
            HOT_KINDS,
            foreign=True,
        ),
        Contender(
            AIOCACHE,
            partial(_aiocache, ttl),
            "cannot serve stale: a lock, callers wait",
            HOT_KINDS,
            foreign=True,
        ),
    )


async def _window(keyed: Keyed, key: str, settings: Settings) -> Traffic:
    """``key`` fetched once, then ``settings.readers`` readers on it until four origin
    latencies past its TTL (the first fetch is not among the figures)."""
    await keyed.read(key)
    return await steady_traffic(
        settings.readers,
        settings.hot_ttl + 4 * settings.latency,
        settings.pace,
        lambda reader, n: keyed.read(key),
    )


async def measure_hot(backend: str, settings: Settings) -> list[Samples]:
    """Per contender and window: p50 and p99 in µs, origin calls; windows take turns."""
    async with AsyncExitStack() as outer:
        measured, running = await start_contenders(
            _hot_contenders(settings.hot_ttl), settings.latency, outer, backend, reads_through
        )
        p50s, p99s, counts = (running.get(kind, []) for kind in HOT_KINDS)
        contenders = [
            (p50, p99, queries, keyed)
            for (p50, keyed), (p99, _), (queries, _) in zip(p50s, p99s, counts, strict=True)
        ]
        for window in range(settings.windows):
            for p50, p99, queries, keyed in rotated(contenders, window):
                gc.collect()
                before = keyed.origin.total
                traffic = await _window(keyed, f"hot:{window}", settings)
                if traffic.errors:
                    raise RuntimeError(f"{p50.name}: {traffic.errors} calls failed, origin up")
                p50.values.append(traffic.percentile(50) * 1e6)
                p99.values.append(traffic.percentile(99) * 1e6)
                queries.values.append(keyed.origin.total - before - 1)
    return measured


def _us(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _median_and_spread(samples: Samples, figure: Callable[[float], str] = _us) -> str:
    return f"{figure(samples.median)} ({figure(min(samples.values))}-{figure(max(samples.values))})"


def hot_table(measured: Sequence[Samples], settings: Settings) -> Table:
    def cells(name: str, backend: str) -> list[str]:
        p99 = find(measured, name, backend, P99)
        fresh = find(measured, HOT_FRESH, backend, P99).median
        return [
            _median_and_spread(find(measured, name, backend, P50)),
            _median_and_spread(p99),
            f"{p99.median / fresh:.2f}x",
            _median_and_spread(find(measured, name, backend, QUERIES), str),
        ]

    return per_backend(
        f"A hot key across its expiry: {settings.readers} readers, TTL "
        f"{settings.hot_ttl * 1000:.0f} ms, origin {settings.latency * 1000:.0f} ms a query, "
        f"{settings.windows} windows",
        _hot_contenders(settings.hot_ttl),
        measured,
        P99,
        ("p50 µs", "p99 µs", "p99 ÷ fresh", "origin calls"),
        cells,
        f"Per window, over every call of the {settings.readers} readers: p50 and p99 in µs; "
        "the figure is the median over the windows, with their spread (min-max). p99 ÷ "
        "fresh: the row's p99 ÷ that of the same readers on a key that does not expire in the "
        "window. origin calls: in the window, the first fetch not counted. cashews' `early` "
        "and `soft` are given `ttl=TTL+60` and `early_ttl`/`soft_ttl=TTL`.",
    )


def hot_targets(measured: Sequence[Samples]) -> list[Verdict]:
    verdicts = []
    for backend in BACKENDS:
        fresh = find(measured, HOT_FRESH, backend, P99).median
        ours = find(measured, HOT_SWR, backend, P99).median
        verdicts.append(
            Verdict.check(
                "expiry",
                ours <= 5 * fresh,
                backend,
                "with stale-while-revalidate, p99 across the expiry <= 5x a fresh-hit p99",
                f"{_us(ours)} µs vs {_us(fresh)} µs = {ours / fresh:.1f}x",
            )
        )
    return verdicts


def hot_comparisons(measured: Sequence[Samples]) -> list[Comparison]:
    """layercache with stale-while-revalidate against each peer that ran, by p99."""
    found = []
    for backend in BACKENDS:
        ours = find(measured, HOT_SWR, backend, P99).median
        for peer in (CASHEWS_EARLY, CASHEWS_SOFT, AIOCACHE):
            theirs = find(measured, peer, backend, P99)
            if theirs.unsupported is None:
                speedup = theirs.median / ours
                found.append(Comparison("hot key across its expiry, p99", peer, backend, speedup))
    return found


# -- 3. the origin down -------------------------------------------------------------------

ERRORS, CALLS, FAILED, PER_KEY = "caller errors", "calls", "origin calls", "most per key"
DOWN_KINDS = (ERRORS, CALLS, FAILED, PER_KEY)
SIE = "layercache, stale-if-error"


def _down_contenders(settings: Settings) -> tuple[Contender[float, Keyed], ...]:
    ttl = settings.down_ttl
    sie = Freshness(stale_if_error=STALE_WINDOW, error_backoff=settings.backoff)
    return (
        Contender(
            SIE,
            partial(_layercache, sie, ttl),
            f"stale_if_error=60, error_backoff={settings.backoff:g}",
            DOWN_KINDS,
        ),
        Contender(
            "layercache, no freshness",
            partial(_layercache, None, ttl),
            "for contrast: the errors reach the callers",
            DOWN_KINDS,
        ),
        Contender(
            CASHEWS_SOFT,
            partial(_cashews, "soft", ttl, STALE_WINDOW),
            "the old value on an error; no backoff",
            DOWN_KINDS,
            foreign=True,
        ),
        Contender(
            CASHEWS_EARLY,
            partial(_cashews, "early", ttl, STALE_WINDOW),
            "the old value until its ttl; recomputed in the background",
            DOWN_KINDS,
            foreign=True,
        ),
        Contender(
            AIOCACHE,
            partial(_aiocache, ttl),
            "cannot express stale-if-error: shown as it is",
            DOWN_KINDS,
            foreign=True,
        ),
    )


async def measure_down(backend: str, settings: Settings) -> list[Samples]:
    """Every contender at once on one timeline: the origin up, then down until the end;
    caller errors and calls, origin calls in the outage (in all, and the most for a key)."""
    keys = [f"item:{n}" for n in range(settings.down_keys)]
    async with AsyncExitStack() as outer:
        measured, running = await start_contenders(
            _down_contenders(settings), 0.0, outer, backend, reads_through
        )
        contenders = {samples.name: keyed for samples, keyed in running.get(ERRORS, [])}
        traffic: dict[str, Traffic] = {}

        async def readers(name: str, keyed: Keyed) -> None:
            traffic[name] = await steady_traffic(
                settings.down_readers,
                settings.up + settings.down,
                settings.pace,
                lambda reader, n: keyed.read(keys[(reader + n) % len(keys)]),
            )

        async with anyio.create_task_group() as everyone:
            for name, keyed in contenders.items():
                everyone.start_soon(readers, name, keyed)
            await anyio.sleep(settings.up)  # the timeline: the origin goes down now
            for keyed in contenders.values():
                keyed.origin.down = True
    figures = {(samples.name, samples.kind): samples.values for samples in measured}
    for name, keyed in contenders.items():
        failed = [keyed.origin.failed[key] for key in keys]
        figures[name, ERRORS].append(traffic[name].errors)
        figures[name, CALLS].append(traffic[name].calls)
        figures[name, FAILED].append(sum(failed))
        figures[name, PER_KEY].append(max(failed))
    return measured


def calls_bound(settings: Settings) -> int:
    """The most origin calls a key may get in the outage at one per ``error_backoff``."""
    return math.ceil(settings.down / settings.backoff)


def down_table(measured: Sequence[Samples], settings: Settings) -> Table:
    def cells(name: str, backend: str) -> list[str]:
        value = {kind: int(find(measured, name, backend, kind).values[0]) for kind in DOWN_KINDS}
        return [
            f"{value[ERRORS]:,} of {value[CALLS]:,}",
            f"{value[FAILED]:,}",
            f"{value[PER_KEY]:,}",
        ]

    return per_backend(
        f"The origin down for {settings.down:g} s, stale-if-error on",
        _down_contenders(settings),
        measured,
        ERRORS,
        ("caller errors", "origin calls", "per key"),
        cells,
        f"{settings.down_readers} readers over {settings.down_keys} keys, each fetched while "
        f"the origin was up ({settings.up:g} s), then the origin down for {settings.down:g} s "
        f"(every query raises at once), TTL {settings.down_ttl:g} s: entries expire all "
        "through the outage. caller errors: calls that raised, of all calls; origin calls: "
        "queries during the outage, in all and the most for one key (at one per "
        f"error_backoff, at most {calls_bound(settings)}). cashews is given `ttl=TTL+60` and "
        "`soft_ttl`/`early_ttl=TTL`. The contenders ran at the same time, each with its "
        "own origin: these are counts, not times.",
    )


def down_targets(measured: Sequence[Samples], settings: Settings) -> list[Verdict]:
    verdicts = []
    bound = calls_bound(settings)
    for backend in BACKENDS:
        errors = int(find(measured, SIE, backend, ERRORS).values[0])
        calls = int(find(measured, SIE, backend, CALLS).values[0])
        most = int(find(measured, SIE, backend, PER_KEY).values[0])
        verdicts.append(
            Verdict.check(
                "origin-down-errors",
                errors == 0,
                backend,
                f"origin down {settings.down:g} s: 0 caller errors for keys seen before",
                f"{errors} of {calls:,} calls failed",
            )
        )
        verdicts.append(
            Verdict.check(
                "origin-down-calls",
                most <= bound,
                backend,
                f"origin calls <= 1 per key per error_backoff ({settings.backoff:g} s)",
                f"at most {most} for a key in {settings.down:g} s (allowed: {bound})",
            )
        )
    return verdicts


# -- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    runs: int
    """Timed batches per state (1)."""
    batch: int
    """Awaited gets per batch (1)."""
    windows: int
    """Windows per contender (2)."""
    down: float
    """Seconds the origin is down (3)."""
    backoff: float
    """``error_backoff`` (3)."""
    down_ttl: float
    """The keys' TTL (3)."""
    keys: int = 50
    """Keys in rotation (1): fewer than the 100 refreshes a stack runs at once."""
    readers: int = 200
    pace: float = 0.02
    """Seconds each reader pauses between two calls (2, 3)."""
    hot_ttl: float = 0.2
    latency: float = 0.05
    """Seconds an origin query takes (2)."""
    down_keys: int = 20
    down_readers: int = 50

    @property
    def up(self) -> float:
        """Seconds the origin is up first (3): two TTLs, each key fetched and refreshed."""
        return 2 * self.down_ttl

    @classmethod
    def default(cls, quick: bool) -> Settings:
        if quick:  # a smoke test: figures too noisy to read
            return cls(runs=2, batch=1_000, windows=1, down=1.0, backoff=0.25, down_ttl=0.25)
        return cls(runs=15, batch=20_000, windows=7, down=10.0, backoff=2.0, down_ttl=1.0)


def measure(settings: Settings) -> Report:
    """Everything the script measures, as a report."""
    print_machine(LIBRARIES)
    # Expected, and not worth a traceback each: the outage makes the stacks log a warning
    # per key and backoff, cashews' failed background recomputes end as asyncio tasks whose
    # exception nobody retrieves, and aiocache logs its every failure to run on trio.
    for name in ("layercache", "asyncio", "aiocache"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    hits: list[Samples] = []
    hot: list[Samples] = []
    down: list[Samples] = []
    for backend in BACKENDS:
        hits += anyio.run(measure_hits, backend, settings, backend=backend)
        hot += anyio.run(measure_hot, backend, settings, backend=backend)
        down += anyio.run(measure_down, backend, settings, backend=backend)
    return Report(
        title=TITLE,
        tables=(
            hits_table(hits, settings),
            hot_table(hot, settings),
            down_table(down, settings),
        ),
        verdicts=(*hits_targets(hits), *hot_targets(hot), *down_targets(down, settings)),
        comparisons=tuple(hot_comparisons(hot)),
        settings=(
            f"{settings.runs} runs of {settings.batch:,} gets; {settings.windows} windows of "
            f"{settings.readers} readers; the origin down {settings.down:g} s"
        ),
    )


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    return measure_and_print(partial(measure, Settings.default(quick)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument("--runs", type=int, help="timed batches per state (default 15)")
    parser.add_argument("--windows", type=int, help="windows per contender (default 7)")
    parser.add_argument("--down", type=float, help="seconds the origin is down (default 10)")
    options = parser.parse_args(argv)
    defaults = Settings.default(options.quick)
    settings = dataclasses.replace(
        defaults,
        runs=options.runs or defaults.runs,
        windows=options.windows or defaults.windows,
        down=options.down or defaults.down,
    )
    measure_and_print(partial(measure, settings))


if __name__ == "__main__":
    main()
