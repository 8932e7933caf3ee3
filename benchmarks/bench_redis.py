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

import importlib
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import hiredis
from _harness import (
    BACKENDS,
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
    redis_server,
    side_by_side,
    start_contenders,
    take_turns,
)
from _machine import version
from _results import Comparison, Report, Table, Verdict
from anyio.abc import ByteStream

from layercache import CacheStack, RedisLayer

LAYERCACHE_PREFIX = "bench:"
RAW_PREFIX = "bench-raw:"
"""Where the peers' values live: outside layercache's prefix, so nothing collides."""

LAYER_DIRECT = "layercache RedisLayer.get_many"
REDIS_PY = "redis.asyncio GET + loads"
REDIS_PY_BLOCKING = "redis.asyncio GET + loads, blocking pool"
COREDIS = "coredis GET + loads"
THREADS = "redis-py (sync) GET in to_thread + loads"
FLOOR = "anyio stream + hiredis GET + loads"
LIBRARIES = ("layercache", "anyio", "trio", "redis", "hiredis", "coredis", "orjson")

SEQUENTIAL = "sequential"
CONCURRENT = "concurrent"
BOTH = (SEQUENTIAL, CONCURRENT)

Getter = Callable[[str], Awaitable[object]]
"""One contender's lookup: ``await get(key)`` returns the decoded value stored for ``key``."""
Loads = Callable[[bytes], Any]


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
class Workload:
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


async def _layercache_stack(stack: AsyncExitStack, workload: Workload) -> CacheStack:
    cache = CacheStack([RedisLayer(url=workload.url, prefix=LAYERCACHE_PREFIX)])
    await stack.enter_async_context(cache)
    items = list(workload.values.items())
    for start in range(0, len(items), 1_000):
        await cache.set_many(dict(items[start : start + 1_000]))
    return cache


async def start_layercache(stack: AsyncExitStack, workload: Workload) -> Getter:
    cache = await _layercache_stack(stack, workload)
    get: Getter = cache.get
    return get


async def start_layer_direct(stack: AsyncExitStack, workload: Workload) -> Getter:
    # The layer's own read, as the stack's load calls it: what the stack adds on top of
    # the layer (argument checks, the coordinator, its load task) is left out.
    cache = await _layercache_stack(stack, workload)
    (layer,) = cache.layers

    async def get(key: str) -> object:
        hit = (await layer.get_many((key,))).get(key)
        return None if hit is None else hit.value

    return get


def _raw_getter(client: Any) -> Getter:
    async def get(key: str) -> object:
        return LOADS(await client.get(RAW_PREFIX + key))

    return get


async def start_redis_py(stack: AsyncExitStack, workload: Workload) -> Getter:
    # redis-py ships its own asyncio package; it is used as Any so the contenders read alike.
    redis_asyncio: Any = importlib.import_module("redis.asyncio")
    # One connection per task: redis-py's default pool stops at 100 and then raises
    # MaxConnectionsError instead of waiting.
    client = redis_asyncio.Redis.from_url(workload.url, max_connections=workload.tasks)
    stack.push_async_callback(client.aclose)
    return _raw_getter(client)


async def start_redis_py_blocking(stack: AsyncExitStack, workload: Workload) -> Getter:
    redis_asyncio: Any = importlib.import_module("redis.asyncio")
    pool = redis_asyncio.BlockingConnectionPool.from_url(workload.url)  # at most 50, then waits
    client = redis_asyncio.Redis(connection_pool=pool)
    stack.push_async_callback(pool.aclose)
    stack.push_async_callback(client.aclose)
    return _raw_getter(client)


async def start_coredis(stack: AsyncExitStack, workload: Workload) -> Getter:
    coredis: Any = importlib.import_module("coredis")
    client = coredis.Redis.from_url(workload.url)  # default pool: up to 64 connections
    await stack.enter_async_context(client)
    return _raw_getter(client)


async def start_threads(stack: AsyncExitStack, workload: Workload) -> Getter:
    redis: Any = importlib.import_module("redis")
    client = redis.Redis.from_url(workload.url)
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


async def start_floor(stack: AsyncExitStack, workload: Workload) -> Getter:
    url = urllib.parse.urlsplit(workload.url)
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


CONTENDERS: tuple[Contender[Workload, Getter], ...] = (
    Contender(LAYERCACHE, start_layercache, "RedisLayer only (L2), url=", BOTH),
    Contender(LAYER_DIRECT, start_layer_direct, "diagnostic: the layer without the stack", BOTH),
    Contender(
        REDIS_PY, start_redis_py, "asyncio target peer; pool of 200 connections", BOTH, foreign=True
    ),
    Contender(
        REDIS_PY_BLOCKING,
        start_redis_py_blocking,
        "info: BlockingConnectionPool, 50 connections",
        kinds=(CONCURRENT,),
        foreign=True,
    ),
    Contender(COREDIS, start_coredis, "trio target peer; default pool (64)", BOTH, foreign=True),
    Contender(THREADS, start_threads, "info: DESIGN §3 option", kinds=(SEQUENTIAL,)),
    Contender(
        FLOOR, start_floor, "floor: bare socket, one connection", kinds=(SEQUENTIAL,), foreign=True
    ),
)


# -- measuring ----------------------------------------------------------------------------


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


async def measure_backend(
    backend: str, workload: Workload, runs: int, batch: int, per_task: int
) -> list[Samples]:
    sequential_keys = [workload.keys[i % len(workload.keys)] for i in range(batch)]
    groups = [workload.keys[j * per_task : (j + 1) * per_task] for j in range(workload.tasks)]
    gets = workload.tasks * per_task

    async def read_one(name: str, get: Getter) -> None:
        await get(workload.keys[0])

    async def gets_per_second(get: Getter) -> float:
        return gets / (await time_concurrent(get, groups) / 1e9)

    async with AsyncExitStack() as outer:
        measured, running = await start_contenders(
            CONTENDERS, workload, outer, backend, read_one, throughput=(CONCURRENT,)
        )
        sequential, concurrent = running.get(SEQUENTIAL, []), running.get(CONCURRENT, [])
        # Warm-up, untimed: one batch each, every value checked (the concurrent round
        # reads every key once; it also opens the pools' connections).
        for samples, get in sequential:
            found = {key: await get(key) for key in sequential_keys}
            check_values(samples.name, found, workload.values)
        for samples, get in concurrent:
            found = {}
            await time_concurrent(get, groups, found)
            if len(found) != gets:
                raise RuntimeError(f"{samples.name} read {len(found)} keys, not {gets}")
            check_values(samples.name, found, workload.values)
        one_batch = [(s.values, partial(mean_ns, get, sequential_keys)) for s, get in sequential]
        one_round = [(s.values, partial(gets_per_second, get)) for s, get in concurrent]
        for run in range(runs):
            await take_turns(run, one_batch)
            await take_turns(run, one_round)
    return measured


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


def write_raw(workload: Workload) -> None:
    """Store the peers' copies of the values: plain JSON bytes under ``RAW_PREFIX``."""
    client = _sync_client(workload.url)
    try:
        pipeline = client.pipeline(transaction=False)
        for key, value in workload.values.items():
            pipeline.set(RAW_PREFIX + key, DUMPS(value))
        pipeline.execute()
    finally:
        client.close()


async def clean_up(workload: Workload) -> None:
    """Remove what the run wrote (for a server that outlives it)."""
    async with CacheStack([RedisLayer(url=workload.url, prefix=LAYERCACHE_PREFIX)]) as cache:
        await cache.clear()
    client = _sync_client(workload.url)
    try:
        names = [RAW_PREFIX + key for key in workload.keys]
        for start in range(0, len(names), 1_000):
            client.delete(*names[start : start + 1_000])
    finally:
        client.close()


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


# -- reporting ----------------------------------------------------------------------------


def result_table(measured: Sequence[Samples], kind: str, title: str) -> Table:
    """Each implementation of one ``kind`` once, asyncio and trio side by side."""
    if kind == SEQUENTIAL:
        unit, figure = "us/get", partial(Samples.figure, per=1e3)
        note = (
            "us/get: the median over the runs of each batch's mean time per get, and the "
            "spread (min-max) of those batch means. Speed-up: the row's median time ÷ "
            "layercache's"
        )
    else:
        unit, figure = "gets/s", partial(Samples.figure, median=",.0f", spread=",.0f")
        note = (
            "gets/s: the median over the runs of gets per second of wall time, and the "
            "spread (min-max). Speed-up: layercache's median gets/s ÷ the row's"
        )
    note += (
        ", same backend and run; below 1.00x, layercache was the slower one. The "
        "*RedisLayer.get_many* row is layercache's own layer without the stack."
    )
    columns = (f"{unit} (min-max)", "layercache speed-up")
    return side_by_side(title, CONTENDERS, measured, kind, columns, figure, note)


def comparisons(measured: Sequence[Samples], tasks: int) -> list[Comparison]:
    """layercache's speed-up over every peer that ran (its own layer left out)."""
    goals = {
        (SEQUENTIAL, "asyncio", REDIS_PY): 1.0,
        (SEQUENTIAL, "trio", COREDIS): 2.0,  # at most 0.5x its time
        (CONCURRENT, "asyncio", REDIS_PY): 2.0,
    }
    scenarios = {SEQUENTIAL: "L2 hit, sequential", CONCURRENT: f"L2 hits, {tasks} tasks"}
    return [
        Comparison(scenario, peer.name, backend, speedup, goals.get((kind, backend, peer.name)))
        for kind, scenario in scenarios.items()
        for backend in BACKENDS
        for peer, speedup in peers_that_ran(measured, backend, kind, (LAYERCACHE, LAYER_DIRECT))
    ]


def _us(samples: Samples) -> str:
    return f"{samples.median / 1e3:.1f} us"


def _versus(
    target: str,
    goal: str,
    ours: Samples,
    peer: Samples,
    passed: Callable[[float], bool],
    measured: Callable[[float], str],
) -> Verdict:
    """``ours`` against ``peer`` by the ratio of their medians (n/a if the peer did not run)."""
    if peer.unsupported is not None:
        return Verdict(
            target, "n/a", ours.backend, goal, f"the peer did not run ({peer.unsupported})"
        )
    factor = ours.median / peer.median
    return Verdict.check(target, passed(factor), ours.backend, goal, measured(factor))


def _trio_sequential(measured: Sequence[Samples]) -> Verdict:
    """Against coredis on trio, or on asyncio where it does not run on trio."""
    ours = find(measured, LAYERCACHE, "trio", SEQUENTIAL)
    peer = find(measured, COREDIS, "trio", SEQUENTIAL)
    goal, target = "L2 hit sequential median <= 0.5x a coredis GET", "l2-sequential-trio"
    if peer.unsupported is None:
        factor = ours.median / peer.median
        measured_text = (
            f"layercache {_us(ours)} vs {_us(peer)} = {factor:.2f}x (coredis + JSON decode)"
        )
        return Verdict.check(target, factor <= 0.5, "trio", f"{goal} on trio", measured_text)
    fallback = find(measured, COREDIS, "asyncio", SEQUENTIAL)
    if fallback.unsupported is not None:
        return Verdict(target, "n/a", "trio", goal, f"coredis did not run ({peer.unsupported})")
    factor = ours.median / fallback.median
    measured_text = (
        f"coredis does not run on trio ({peer.unsupported}), so against coredis "
        f"on asyncio: layercache on trio {_us(ours)} vs {_us(fallback)} = {factor:.2f}x"
    )
    return Verdict.check(target, factor <= 0.5, "trio", goal, measured_text)


def targets(measured: Sequence[Samples], tasks: int) -> list[Verdict]:
    """One verdict per DESIGN §5 Redis target: PASS, FAIL or n/a (with why)."""
    ours = find(measured, LAYERCACHE, "asyncio", SEQUENTIAL)
    peer = find(measured, REDIS_PY, "asyncio", SEQUENTIAL)
    sequential = _versus(
        "l2-sequential-asyncio",
        "L2 hit sequential median <= 1.0x a redis.asyncio GET + JSON decode",
        ours,
        peer,
        lambda factor: factor <= 1.0,
        lambda factor: f"layercache {_us(ours)} vs {_us(peer)} = {factor:.2f}x",
    )
    fast = find(measured, LAYERCACHE, "asyncio", CONCURRENT)
    pool = find(measured, REDIS_PY, "asyncio", CONCURRENT)
    concurrent = _versus(
        "l2-concurrent",
        f"{tasks} concurrent tasks, distinct keys: throughput >= 2x redis.asyncio GETs",
        fast,
        pool,
        lambda factor: factor >= 2.0,
        lambda factor: (
            f"layercache {fast.median:,.0f} gets/s vs {pool.median:,.0f} gets/s = {factor:.2f}x"
        ),
    )
    on_trio = find(measured, LAYERCACHE, "trio", CONCURRENT)
    info = f"layercache {on_trio.median:,.0f} gets/s"
    if pool.unsupported is None:
        info += (
            f" = {on_trio.median / pool.median:.2f}x redis.asyncio on asyncio (no target: "
            "redis.asyncio does not run on trio)"
        )
    trio = Verdict("l2-concurrent", "info", "trio", f"{tasks} concurrent tasks", info)
    return [sequential, _trio_sequential(measured), concurrent, trio]


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


def _print_header(workload: Workload, where: str) -> None:
    json_library = f"orjson {version('orjson')}" if JSON_NAME == "orjson" else JSON_NAME
    print_machine(
        LIBRARIES,
        ("JSON", f"{json_library} (what layercache's json serializer uses; peers too)"),
        ("redis-py", f"parser {_redis_py_parser()}"),
        ("server", f"{_server_version(workload.url)}, {where}"),
    )
    count = len(workload.keys)
    print(
        f"Values: {count:,} small dicts like {_item(0)!r} (up to "
        f"{len(DUMPS(_item(count - 1)))} bytes of JSON); layercache's under "
        f"{LAYERCACHE_PREFIX!r} (in its envelope), the peers' as plain JSON under "
        f"{RAW_PREFIX!r}\n"
    )


def measure(settings: Settings) -> Report:
    """Everything the script measures, as a report."""
    runs, batch, tasks, per_task = settings.runs, settings.batch, settings.tasks, settings.per_task
    with redis_server(settings.redis_url) as server:
        values = {f"item:{i}": _item(i) for i in range(max(batch, tasks * per_task))}
        workload = Workload(server.url, tuple(values), values, tasks)
        _print_header(workload, server.where)
        write_raw(workload)
        measured: list[Samples] = []
        try:
            for backend in BACKENDS:
                measured += anyio.run(
                    measure_backend, backend, workload, runs, batch, per_task, backend=backend
                )
        finally:
            if settings.redis_url is not None:
                anyio.run(clean_up, workload)
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
            result_table(measured, SEQUENTIAL, sequential),
            result_table(measured, CONCURRENT, concurrent),
        ),
        verdicts=tuple(targets(measured, tasks)),
        comparisons=tuple(comparisons(measured, tasks)),
        settings=(
            f"{runs} runs; sequential batches of {batch:,} gets; {tasks} tasks x {per_task} gets"
        ),
    )


TITLE = "Redis (L2)"


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    return measure_and_print(partial(measure, Settings.default(quick)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(__doc__)
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
    settings = Settings(
        runs=options.runs or defaults.runs,
        batch=options.batch or defaults.batch,
        per_task=options.per_task or defaults.per_task,
        tasks=options.tasks,
        redis_url=options.redis_url,
    )
    measure_and_print(partial(measure, settings))


if __name__ == "__main__":
    main()
