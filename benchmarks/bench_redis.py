"""Benchmark: the Redis layer's hit latency and concurrent throughput (DESIGN.md §5).

Everything runs against a real redis-server: a private one started for the run
(``layercache.testing.RedisServer``, on a free loopback port), or the one ``--redis-url``
names. The stack under test is ``CacheStack([RedisLayer(url=url, prefix="bench:")])``:
the Redis layer alone (L2), so every ``await cache.get(key)`` goes to Redis. Its peers
read the same values, serialized with the same JSON library (orjson when it is
importable, the standard library otherwise, as layercache's default serializer does),
stored under their own names, and decode them with it after each GET.

Two measurements, each on asyncio and on trio (a peer that cannot run on a backend is
tried there anyway, and reported as not running, with the error it raised):

1. **Sequential L2 hit latency**: one task awaits one get after another over a batch of
   distinct keys. The contenders take turns, batch after batch, so their ratios come
   from the same minutes of the same process. The figure is the median over the runs
   of each batch's mean time per get.
2. **Concurrent throughput**: 200 tasks, each looping over its own keys (no key is read
   by two tasks), started together; gets per second of wall time from the moment they
   are released until the last one finishes. The median over the runs, again taking
   turns.

Every contender is checked to return what was stored, for every key, before the timed
runs (in an untimed warm-up).

Run from the repository root::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_redis.py           # 70-80 s on 2 cores
    .venv/bin/python benchmarks/bench_redis.py --quick   # a few seconds: a smoke test
    .venv/bin/python benchmarks/bench_redis.py --redis-url redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import json
import statistics
import time
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import hiredis
from _machine import describe, load_average, version
from _results import Comparison, Report, Table, Verdict, capture_stdout
from anyio.abc import ByteStream

from layercache import CacheStack, RedisLayer

BACKENDS = ("asyncio", "trio")
LAYERCACHE_PREFIX = "bench:"
RAW_PREFIX = "bench-raw:"
"""Where the peers' values live: outside layercache's prefix, so nothing collides."""

LAYERCACHE = "layercache CacheStack.get"
LAYER_DIRECT = "layercache RedisLayer.get_many"
REDIS_PY = "redis.asyncio GET + loads"
REDIS_PY_BLOCKING = "redis.asyncio GET + loads, blocking pool"
COREDIS = "coredis GET + loads"
THREADS = "redis-py (sync) GET in to_thread + loads"
FLOOR = "anyio stream + hiredis GET + loads"

SEQUENTIAL = "sequential"
CONCURRENT = "concurrent"

Getter = Callable[[str], Awaitable[object]]
"""One contender's lookup: ``await get(key)`` returns the decoded value stored for ``key``."""
Loads = Callable[[bytes], Any]
T = TypeVar("T")


def _json_library() -> tuple[str, Loads, Callable[[object], bytes]]:
    """What layercache's default serializer uses: orjson if importable, else json."""
    try:
        orjson: Any = importlib.import_module("orjson")
    except ImportError:
        return "json (standard library)", json.loads, _std_dumps
    return "orjson", orjson.loads, orjson.dumps


def _std_dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


JSON_NAME, LOADS, DUMPS = _json_library()


@dataclass(frozen=True)
class Setup:
    """What every contender gets: the server, the keys and the values behind them."""

    url: str
    keys: tuple[str, ...]
    values: Mapping[str, object]
    tasks: int
    """Concurrent tasks; the redis.asyncio peer gets a pool of this many connections."""


def _item(i: int) -> dict[str, object]:
    return {
        "id": i,
        "sku": f"SKU-{i:07d}",
        "name": f"Product {i}",
        "price": 19.99,
        "tags": ["red", "green", "blue"],
        "in_stock": True,
    }


# -- the contenders ----------------------------------------------------------------------


async def _layercache_stack(stack: AsyncExitStack, setup: Setup) -> CacheStack:
    cache = CacheStack([RedisLayer(url=setup.url, prefix=LAYERCACHE_PREFIX)])
    await stack.enter_async_context(cache)
    items = list(setup.values.items())
    for start in range(0, len(items), 1_000):
        await cache.set_many(dict(items[start : start + 1_000]))
    return cache


async def start_layercache(stack: AsyncExitStack, setup: Setup) -> Getter:
    cache = await _layercache_stack(stack, setup)
    get: Getter = cache.get
    return get


async def start_layer_direct(stack: AsyncExitStack, setup: Setup) -> Getter:
    # The layer's own read, as the stack's load calls it: what the stack adds on top of
    # the layer (argument checks, the coordinator, its load task) is left out.
    cache = await _layercache_stack(stack, setup)
    (layer,) = cache.layers

    async def get(key: str) -> object:
        hit = (await layer.get_many((key,))).get(key)
        return None if hit is None else hit.value

    return get


def _raw_getter(client: Any) -> Getter:
    async def get(key: str) -> object:
        return LOADS(await client.get(RAW_PREFIX + key))

    return get


async def start_redis_py(stack: AsyncExitStack, setup: Setup) -> Getter:
    # redis-py ships its own asyncio package; it is used as Any so the contenders read alike.
    redis_asyncio: Any = importlib.import_module("redis.asyncio")
    # One connection per task: redis-py's default pool stops at 100 and then raises
    # MaxConnectionsError instead of waiting.
    client = redis_asyncio.Redis.from_url(setup.url, max_connections=setup.tasks)
    stack.push_async_callback(client.aclose)
    return _raw_getter(client)


async def start_redis_py_blocking(stack: AsyncExitStack, setup: Setup) -> Getter:
    redis_asyncio: Any = importlib.import_module("redis.asyncio")
    pool = redis_asyncio.BlockingConnectionPool.from_url(setup.url)  # at most 50, then waits
    client = redis_asyncio.Redis(connection_pool=pool)
    stack.push_async_callback(pool.aclose)
    stack.push_async_callback(client.aclose)
    return _raw_getter(client)


async def start_coredis(stack: AsyncExitStack, setup: Setup) -> Getter:
    coredis: Any = importlib.import_module("coredis")
    client = coredis.Redis.from_url(setup.url)  # default pool: up to 64 connections
    await stack.enter_async_context(client)
    return _raw_getter(client)


async def start_threads(stack: AsyncExitStack, setup: Setup) -> Getter:
    redis: Any = importlib.import_module("redis")
    client = redis.Redis.from_url(setup.url)
    stack.callback(client.close)

    async def get(key: str) -> object:
        return LOADS(await anyio.to_thread.run_sync(client.get, RAW_PREFIX + key))

    return get


# hiredis' stub types the command as a 1-tuple; any tuple of str/bytes/int/float is fine.
_hiredis: Any = hiredis
_pack_command: Callable[[tuple[str | int, ...]], bytes] = _hiredis.pack_command


class _MiniClient:
    """The floor: one connection, one command at a time, parsed by hiredis. No pool,
    no timeouts, no reconnects, no cancellation safety."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    async def call(self, *command: str | int) -> object:
        await self.stream.send(_pack_command(command))
        reply = self.reader.gets()
        while reply is False:
            self.reader.feed(await self.stream.receive())
            reply = self.reader.gets()
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply


async def start_floor(stack: AsyncExitStack, setup: Setup) -> Getter:
    url = urllib.parse.urlsplit(setup.url)
    if url.scheme == "unix":
        stream: ByteStream = await anyio.connect_unix(url.path)
        db = urllib.parse.parse_qs(url.query).get("db", ["0"])[0]
    elif url.scheme == "redis":
        stream = await anyio.connect_tcp(url.hostname or "127.0.0.1", url.port or 6379)
        db = url.path.strip("/") or "0"
    else:
        raise ValueError(f"the floor client speaks redis:// and unix:// only, not {url.scheme}")
    await stack.enter_async_context(stream)
    client = _MiniClient(stream)
    if url.password is not None:
        password = urllib.parse.unquote(url.password)
        username = urllib.parse.unquote(url.username or "")
        await client.call(*(("AUTH", username, password) if username else ("AUTH", password)))
    if db != "0":
        await client.call("SELECT", int(db))

    async def get(key: str) -> object:
        raw = await client.call("GET", RAW_PREFIX + key)
        assert isinstance(raw, bytes)
        return LOADS(raw)

    return get


@dataclass(frozen=True)
class Contender:
    name: str
    start: Callable[[AsyncExitStack, Setup], Awaitable[Getter]]
    note: str
    kinds: tuple[str, ...] = (SEQUENTIAL, CONCURRENT)
    foreign: bool = False
    """A peer that may not run on every backend: a failure to start is reported, not raised."""


CONTENDERS = (
    Contender(LAYERCACHE, start_layercache, "RedisLayer only (L2), url="),
    Contender(LAYER_DIRECT, start_layer_direct, "diagnostic: the layer without the stack"),
    Contender(
        REDIS_PY,
        start_redis_py,
        "asyncio target peer; pool of 200 connections",
        foreign=True,
    ),
    Contender(
        REDIS_PY_BLOCKING,
        start_redis_py_blocking,
        "info: BlockingConnectionPool, 50 connections",
        kinds=(CONCURRENT,),
        foreign=True,
    ),
    Contender(COREDIS, start_coredis, "trio target peer; default pool (64)", foreign=True),
    Contender(THREADS, start_threads, "info: DESIGN §3 option", kinds=(SEQUENTIAL,)),
    Contender(
        FLOOR, start_floor, "floor: bare socket, one connection", kinds=(SEQUENTIAL,), foreign=True
    ),
)


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Result:
    """Samples of one contender, one kind of measurement, on one backend: nanoseconds per
    get (sequential) or gets per second (concurrent), one per run."""

    name: str
    backend: str
    kind: str
    note: str
    samples: list[float] = field(default_factory=list)
    unsupported: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


async def _start(contender: Contender, setup: Setup, outer: AsyncExitStack) -> Getter | str:
    """Start ``contender`` and read one key; a foreign peer that cannot run here yields
    the error it raised instead of a getter."""
    stack = AsyncExitStack()
    try:
        get = await contender.start(stack, setup)
        await get(setup.keys[0])
    except Exception as error:
        if not contender.foreign:
            raise
        try:
            await stack.aclose()
        except Exception:
            pass  # it could not start on this backend; it cannot stop on it either
        return f"{type(error).__name__}: {error}"
    await outer.enter_async_context(stack)
    return get


def _check(name: str, found: Mapping[str, object], setup: Setup) -> None:
    wrong = [key for key, value in found.items() if value != setup.values[key]]
    if wrong:
        raise RuntimeError(f"{name} does not return what was stored, e.g. {wrong[0]!r}")


async def time_sequential(get: Getter, keys: Sequence[str]) -> int:
    start = time.perf_counter_ns()
    for key in keys:
        await get(key)
    return time.perf_counter_ns() - start


async def time_concurrent(
    get: Getter, groups: Sequence[Sequence[str]], found: dict[str, object] | None = None
) -> int:
    """Nanoseconds from releasing one task per group until the last one is done; each
    task awaits ``get`` for its keys in turn. ``found`` collects the values, if given."""
    all_ready = anyio.Event()
    go = anyio.Event()
    ready = 0

    async def worker(keys: Sequence[str]) -> None:
        nonlocal ready
        ready += 1
        if ready == len(groups):
            all_ready.set()
        await go.wait()
        if found is None:
            for key in keys:
                await get(key)
        else:
            for key in keys:
                found[key] = await get(key)

    async with anyio.create_task_group() as tasks:
        for keys in groups:
            tasks.start_soon(worker, keys)
        await all_ready.wait()
        start = time.perf_counter_ns()
        go.set()
    return time.perf_counter_ns() - start


def _rotated(items: Sequence[T], run: int) -> list[T]:
    """``items`` starting at another one each run, so no contender always follows the same."""
    if not items:
        return []
    shift = run % len(items)
    return [*items[shift:], *items[:shift]]


async def measure(backend: str, setup: Setup, runs: int, batch: int, per_task: int) -> list[Result]:
    sequential_keys = [setup.keys[i % len(setup.keys)] for i in range(batch)]
    groups = [setup.keys[j * per_task : (j + 1) * per_task] for j in range(setup.tasks)]
    gets = setup.tasks * per_task
    results: list[Result] = []
    sequential: list[tuple[Result, Getter]] = []
    concurrent: list[tuple[Result, Getter]] = []
    async with AsyncExitStack() as outer:
        for contender in CONTENDERS:
            with warnings.catch_warnings():
                # A peer that fails on trio drops the coroutine it meant to schedule on
                # asyncio; the "never awaited" warning that follows is that failure.
                warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
                started = await _start(contender, setup, outer)
                gc.collect()
            for kind in contender.kinds:
                result = Result(contender.name, backend, kind, contender.note)
                results.append(result)
                if isinstance(started, str):
                    result.unsupported = started
                elif kind == SEQUENTIAL:
                    sequential.append((result, started))
                else:
                    concurrent.append((result, started))

        # Warm-up, untimed: one batch each, every value checked (the concurrent round
        # reads every key once; it also opens the pools' connections).
        for result, get in sequential:
            _check(result.name, {key: await get(key) for key in sequential_keys}, setup)
        for result, get in concurrent:
            found: dict[str, object] = {}
            await time_concurrent(get, groups, found)
            if len(found) != gets:
                raise RuntimeError(f"{result.name} read {len(found)} keys, not {gets}")
            _check(result.name, found, setup)

        for run in range(runs):
            for result, get in _rotated(sequential, run):
                gc.collect()
                await anyio.lowlevel.checkpoint()
                result.samples.append(await time_sequential(get, sequential_keys) / batch)
            for result, get in _rotated(concurrent, run):
                gc.collect()
                await anyio.lowlevel.checkpoint()
                result.samples.append(gets / (await time_concurrent(get, groups) / 1e9))
    return results


# -- the server and the data ------------------------------------------------------------


def _sync_client(url: str) -> Any:
    redis: Any = importlib.import_module("redis")
    return redis.Redis.from_url(url)


def _server_version(url: str) -> str:
    client = _sync_client(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    name = "Valkey" if "valkey_version" in info else "Redis"
    return f"{name} {info.get('valkey_version') or info['redis_version']}"


def write_raw(setup: Setup) -> None:
    """Store the peers' copies of the values: plain JSON bytes under ``RAW_PREFIX``."""
    client = _sync_client(setup.url)
    try:
        pipeline = client.pipeline(transaction=False)
        for key, value in setup.values.items():
            pipeline.set(RAW_PREFIX + key, DUMPS(value))
        pipeline.execute()
    finally:
        client.close()


async def clean_up(setup: Setup) -> None:
    """Remove what the run wrote (for a server that outlives it)."""
    async with CacheStack([RedisLayer(url=setup.url, prefix=LAYERCACHE_PREFIX)]) as cache:
        await cache.clear()
    client = _sync_client(setup.url)
    try:
        names = [RAW_PREFIX + key for key in setup.keys]
        for start in range(0, len(names), 1_000):
            client.delete(*names[start : start + 1_000])
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[tuple[str, str]]:
    """The URL to use and a description of where the server comes from."""
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
        yield url, f"given with --redis-url ({where})"
        return
    from layercache.testing import RedisServer

    with RedisServer() as server:
        yield server.url, f"private, on loopback, started for this run: {server.binary}"


# -- reporting ----------------------------------------------------------------------------

LIBRARIES = ("layercache", "anyio", "trio", "redis", "hiredis", "coredis", "orjson")


def _redis_py_parser() -> str:
    """Which reply parser redis.asyncio picks (it uses hiredis whenever it imports)."""
    try:
        connection: Any = importlib.import_module("redis.asyncio.connection")
        utils: Any = importlib.import_module("redis.utils")
    except ImportError:
        return "redis-py not installed"
    parser = connection.DefaultParser.__name__
    if utils.HIREDIS_AVAILABLE:
        return f"{parser}: hiredis {version('hiredis')} is used"
    return f"{parser}: hiredis is NOT used (not importable)"


def print_machine(server: str, where: str) -> None:
    print("Machine")
    for label, value in describe(LIBRARIES):
        if label == "load avg":
            json_library = f"orjson {version('orjson')}" if JSON_NAME == "orjson" else JSON_NAME
            print(
                f"  JSON:       {json_library} (what layercache's json serializer uses; peers too)"
            )
            print(f"  redis-py:   parser {_redis_py_parser()}")
            print(f"  server:     {server}, {where}")
            # The server shares the same cores.
            value += " (at start)"
        print(f"  {label + ':':<12}{value}")
    print()


def _find(results: Sequence[Result], name: str, backend: str, kind: str) -> Result:
    for result in results:
        if (result.name, result.backend, result.kind) == (name, backend, kind):
            return result
    raise LookupError(name, backend, kind)


def print_sequential(results: Sequence[Result], runs: int, batch: int) -> None:
    _print_kind(
        results,
        SEQUENTIAL,
        f"L2 hit latency, sequential: median over {runs} runs of {batch:,} awaited gets "
        "(distinct keys, one task)",
        ("median us/get", "min-max us", 13),
        lambda value: value / 1e3,
        ".1f",
        "the row's median time / layercache's",
    )


def print_concurrent(results: Sequence[Result], runs: int, tasks: int, per_task: int) -> None:
    _print_kind(
        results,
        CONCURRENT,
        f"L2 hits, {tasks} concurrent tasks x {per_task} gets each (all {tasks * per_task:,} "
        f"keys distinct): median over {runs} runs",
        ("median gets/s", "min-max gets/s", 15),
        lambda value: value,
        ".0f",
        "layercache's median gets/s / the row's",
    )


def _print_kind(
    results: Sequence[Result],
    kind: str,
    title: str,
    columns: tuple[str, str, int],
    unit: Callable[[float], float],
    decimals: str,
    speedup: str,
) -> None:
    """One kind's results as the script prints them, asyncio then trio."""
    median_label, spread_label, spread_width = columns
    print(title)
    header = (
        f"  {'implementation':<42} {'backend':<8} {median_label:>13} "
        f"{spread_label:>{spread_width}}  {'layercache speed-up':>19}  note"
    )
    print(header)
    print("  " + "-" * (len(header) - 2 + 40))
    for backend in BACKENDS:
        reference = _find(results, LAYERCACHE, backend, kind)
        for result in results:
            if result.backend != backend or result.kind != kind:
                continue
            if result.unsupported is not None:
                print(
                    f"  {result.name:<42} {backend:<8} {'-':>13} {'-':>{spread_width}}  "
                    f"{'-':>19}  does not run on {backend}: {result.unsupported}"
                )
                continue
            spread = f"{unit(min(result.samples)):.0f}-{unit(max(result.samples)):.0f}"
            print(
                f"  {result.name:<42} {backend:<8} {unit(result.median):>13{decimals}} "
                f"{spread:>{spread_width}}  {_speedup(result, reference):>18.2f}x  {result.note}"
            )
    print(f"  layercache speed-up = {speedup}, same backend and run")
    print()


def _speedup(result: Result, reference: Result) -> float:
    """How many times faster layercache (``reference``) was than ``result``."""
    if result.kind == SEQUENTIAL:
        return result.median / reference.median
    return reference.median / result.median


def result_table(results: Sequence[Result], kind: str, title: str) -> Table:
    """Each implementation of one ``kind`` once, asyncio and trio side by side."""
    rows: list[tuple[str, ...]] = []
    errors: dict[str, str] = {}
    for contender in CONTENDERS:
        if kind not in contender.kinds:
            continue
        row = [contender.name, contender.note]
        for backend in BACKENDS:
            result = _find(results, contender.name, backend, kind)
            if result.unsupported is not None:
                row += ["does not run", "-"]
                errors.setdefault(backend, result.unsupported)
                continue
            low, high = min(result.samples), max(result.samples)
            if kind == SEQUENTIAL:
                figure = f"{result.median / 1e3:.1f} ({low / 1e3:.0f}-{high / 1e3:.0f})"
            else:
                figure = f"{result.median:,.0f} ({low:,.0f}-{high:,.0f})"
            speedup = _speedup(result, _find(results, LAYERCACHE, backend, kind))
            row += [figure, f"{speedup:.2f}x"]
        rows.append(tuple(row))
    unit = "us/get" if kind == SEQUENTIAL else "gets/s"
    columns = ["implementation", "note"]
    for backend in BACKENDS:
        columns += [f"{backend} {unit} (min-max)", f"{backend} layercache speed-up"]
    if kind == SEQUENTIAL:
        note = (
            "us/get: the median over the runs of each batch's mean time per get, and the "
            "spread (min-max) of those batch means. Speed-up: the row's median time ÷ "
            "layercache's"
        )
    else:
        note = (
            "gets/s: the median over the runs of gets per second of wall time, and the "
            "spread (min-max). Speed-up: layercache's median gets/s ÷ the row's"
        )
    note += (
        ", same backend and run; below 1.00x, layercache was the slower one. The "
        "*RedisLayer.get_many* row is layercache's own layer without the stack."
    )
    for backend, error in errors.items():
        note += f" On {backend}, the peers that do not run raise `{error}`."
    return Table(title, tuple(columns), tuple(rows), note)


def comparisons(results: Sequence[Result], tasks: int) -> list[Comparison]:
    """layercache's speed-up over every peer that ran (its own layer left out)."""
    goals = {
        (SEQUENTIAL, "asyncio", REDIS_PY): 1.0,
        (SEQUENTIAL, "trio", COREDIS): 2.0,  # at most 0.5x its time
        (CONCURRENT, "asyncio", REDIS_PY): 2.0,
    }
    scenarios = {SEQUENTIAL: "L2 hit, sequential", CONCURRENT: f"L2 hits, {tasks} tasks"}
    found: list[Comparison] = []
    for kind, scenario in scenarios.items():
        for backend in BACKENDS:
            reference = _find(results, LAYERCACHE, backend, kind)
            for result in results:
                if (result.kind, result.backend) != (kind, backend):
                    continue
                if result.name in (LAYERCACHE, LAYER_DIRECT) or result.unsupported is not None:
                    continue
                found.append(
                    Comparison(
                        scenario,
                        result.name,
                        backend,
                        _speedup(result, reference),
                        goals.get((kind, backend, result.name)),
                    )
                )
    return found


def targets(results: Sequence[Result], tasks: int) -> list[Verdict]:
    """One verdict per DESIGN §5 Redis target: PASS, FAIL or n/a (with why)."""
    verdicts: list[Verdict] = []

    ours = _find(results, LAYERCACHE, "asyncio", SEQUENTIAL)
    peer = _find(results, REDIS_PY, "asyncio", SEQUENTIAL)
    goal = "L2 hit sequential median <= 1.0x a redis.asyncio GET + JSON decode"
    target = "l2-sequential-asyncio"
    if peer.unsupported is not None:
        verdicts.append(
            Verdict(target, "n/a", "asyncio", goal, f"the peer did not run ({peer.unsupported})")
        )
    else:
        factor = ours.median / peer.median
        verdicts.append(
            Verdict.check(
                target,
                factor <= 1.0,
                "asyncio",
                goal,
                f"layercache {ours.median / 1e3:.1f} us vs {peer.median / 1e3:.1f} us "
                f"= {factor:.2f}x",
            )
        )

    ours = _find(results, LAYERCACHE, "trio", SEQUENTIAL)
    peer = _find(results, COREDIS, "trio", SEQUENTIAL)
    goal = "L2 hit sequential median <= 0.5x a coredis GET"
    target = "l2-sequential-trio"
    if peer.unsupported is None:
        factor = ours.median / peer.median
        verdicts.append(
            Verdict.check(
                target,
                factor <= 0.5,
                "trio",
                f"{goal} on trio",
                f"layercache {ours.median / 1e3:.1f} us vs {peer.median / 1e3:.1f} us "
                f"= {factor:.2f}x (coredis + JSON decode)",
            )
        )
    else:
        fallback = _find(results, COREDIS, "asyncio", SEQUENTIAL)
        if fallback.unsupported is not None:
            verdicts.append(
                Verdict(target, "n/a", "trio", goal, f"coredis did not run ({peer.unsupported})")
            )
        else:
            factor = ours.median / fallback.median
            verdicts.append(
                Verdict.check(
                    target,
                    factor <= 0.5,
                    "trio",
                    goal,
                    f"coredis does not run on trio ({peer.unsupported}), so against coredis "
                    f"on asyncio: layercache on trio {ours.median / 1e3:.1f} us vs "
                    f"{fallback.median / 1e3:.1f} us = {factor:.2f}x",
                )
            )

    ours = _find(results, LAYERCACHE, "asyncio", CONCURRENT)
    peer = _find(results, REDIS_PY, "asyncio", CONCURRENT)
    goal = f"{tasks} concurrent tasks, distinct keys: throughput >= 2x redis.asyncio GETs"
    target = "l2-concurrent"
    if peer.unsupported is not None:
        verdicts.append(
            Verdict(target, "n/a", "asyncio", goal, f"the peer did not run ({peer.unsupported})")
        )
    else:
        factor = ours.median / peer.median
        verdicts.append(
            Verdict.check(
                target,
                factor >= 2.0,
                "asyncio",
                goal,
                f"layercache {ours.median:,.0f} gets/s vs {peer.median:,.0f} gets/s "
                f"= {factor:.2f}x",
            )
        )

    ours = _find(results, LAYERCACHE, "trio", CONCURRENT)
    measured = f"layercache {ours.median:,.0f} gets/s"
    if peer.unsupported is None:
        measured += (
            f" = {ours.median / peer.median:.2f}x redis.asyncio on asyncio (no target: "
            "redis.asyncio does not run on trio)"
        )
    verdicts.append(Verdict(target, "info", "trio", f"{tasks} concurrent tasks", measured))
    return verdicts


# -- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    runs: int
    """Timed runs per contender."""
    batch: int
    """Sequential gets per run."""
    per_task: int
    """Gets per concurrent task."""
    tasks: int = 200
    """Concurrent tasks."""
    redis_url: str | None = None
    """A server to use instead of a private one."""

    @classmethod
    def default(cls, quick: bool) -> Settings:
        if quick:  # a smoke test: figures too noisy to read
            return cls(runs=1, batch=200, per_task=2)
        return cls(runs=7, batch=2_000, per_task=20)


def measure_and_print(settings: Settings) -> list[Result]:
    """Everything the script measures, printed as it prints it; the results."""
    runs, batch, tasks, per_task = settings.runs, settings.batch, settings.tasks, settings.per_task
    with redis_server(settings.redis_url) as (url, where):
        count = max(batch, tasks * per_task)
        values = {f"item:{i}": _item(i) for i in range(count)}
        setup = Setup(url, tuple(values), values, tasks)
        print_machine(_server_version(url), where)
        size = len(DUMPS(_item(count - 1)))
        print(
            f"Values: {count:,} small dicts like {_item(0)!r} (up to {size} bytes of JSON); "
            f"layercache's under {LAYERCACHE_PREFIX!r} (in its envelope), the peers' as "
            f"plain JSON under {RAW_PREFIX!r}\n"
        )
        started = time.perf_counter()
        write_raw(setup)
        results: list[Result] = []
        try:
            for backend in BACKENDS:
                results += anyio.run(
                    measure, backend, setup, runs, batch, per_task, backend=backend
                )
        finally:
            if settings.redis_url is not None:
                anyio.run(clean_up, setup)
        print_sequential(results, runs, batch)
        print_concurrent(results, runs, tasks, per_task)
        print("DESIGN §5 targets")
        for verdict in targets(results, tasks):
            print("  " + verdict.line)
        print(
            f"\n(measured in {time.perf_counter() - started:.0f} s; "
            f"load avg at the end {load_average()})"
        )
    return results


TITLE = "Redis (L2)"


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    settings = Settings.default(quick)
    runs, batch, tasks, per_task = settings.runs, settings.batch, settings.tasks, settings.per_task
    with capture_stdout() as printed:
        results = measure_and_print(settings)
    sequential = (
        f"L2 hit latency, sequential: median over {runs} runs of {batch:,} awaited gets "
        "(distinct keys, one task)"
    )
    concurrent = (
        f"L2 hits, {tasks} concurrent tasks x {per_task} gets each (all "
        f"{tasks * per_task:,} keys distinct): median over {runs} runs"
    )
    return Report(
        title=TITLE,
        tables=(
            result_table(results, SEQUENTIAL, sequential),
            result_table(results, CONCURRENT, concurrent),
        ),
        verdicts=tuple(targets(results, tasks)),
        comparisons=tuple(comparisons(results, tasks)),
        settings=(
            f"{runs} runs; sequential batches of {batch:,} gets; {tasks} tasks x {per_task} gets"
        ),
        output=printed.text,
    )


# -- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="1 short run: a smoke test")
    parser.add_argument("--runs", type=int, help="timed runs per contender (default 7)")
    parser.add_argument("--batch", type=int, help="sequential gets per run (default 2000)")
    parser.add_argument("--tasks", type=int, default=200, help="concurrent tasks (200)")
    parser.add_argument("--per-task", type=int, help="gets per concurrent task (default 20)")
    parser.add_argument(
        "--redis-url",
        help="use this server instead of starting a private one; the run writes keys "
        f"under {LAYERCACHE_PREFIX!r} and {RAW_PREFIX!r} and deletes them at the end",
    )
    options = parser.parse_args(argv)
    defaults = Settings.default(options.quick)
    measure_and_print(
        Settings(
            runs=options.runs or defaults.runs,
            batch=options.batch or defaults.batch,
            per_task=options.per_task or defaults.per_task,
            tasks=options.tasks,
            redis_url=options.redis_url,
        )
    )


if __name__ == "__main__":
    main()
