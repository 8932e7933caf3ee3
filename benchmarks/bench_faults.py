"""What a slow Redis costs a caller: strict vs graceful degradation (issue 4 figures).

A real redis-server behind a loopback FaultProxy that adds ``--latency`` seconds
(default 0.5) to every round trip (half each way). For each mode (strict; graceful
with ``retry_after=30``), on each backend, it measures the first call and the median of
the following ones (the first pays any timeout; the rest show what the stack does next):

- L1 warm hit: the key is in the memory layer (Redis is never touched);
- L2 hit: the key is only in Redis (the memory layer was emptied);
- cold miss: in no layer; the fetcher answers at once.

The Redis layer's ``timeout`` is the library default (1.0 s) and a short one (0.4 x the
latency, 0.2 s by default): with 500 ms of latency the default waits for Redis, the
short one gives up on it.

Usage: python benchmarks/bench_faults.py [--latency 0.5] [--calls 5]
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
from _harness import BACKENDS, command_line, measure_and_print, print_machine, redis_server
from _results import Report, Table

from layercache import (
    CacheStack,
    GracefulDegradation,
    LayerUnavailableError,
    MemoryLayer,
    RedisLayer,
)
from layercache.testing import FaultProxy

LIBRARIES = ("layercache", "anyio", "trio")
Outcome = tuple[float, float, str]
"""The first call's seconds, the median of the others, and what they returned."""


async def _time(calls: int, call: Callable[[int], Awaitable[str]]) -> Outcome:
    times: list[float] = []
    outcomes: set[str] = set()
    for n in range(calls):
        started = time.perf_counter()
        try:
            outcomes.add(await call(n))
        except LayerUnavailableError:
            outcomes.add("LayerUnavailableError")
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:]), "/".join(sorted(outcomes))


async def _scenarios(
    url: str, proxy: FaultProxy, latency: float, limit: float, calls: int, graceful: bool
) -> dict[str, Outcome]:
    prefix = f"bench-faults:{uuid.uuid4().hex[:8]}:"
    memory = MemoryLayer()
    layer = RedisLayer(url=url, prefix=prefix, timeout=limit)
    options = {"graceful_degradation": GracefulDegradation(retry_after=30)} if graceful else {}
    results: dict[str, Outcome] = {}

    async def fetch() -> str:
        return "fetched"

    proxy.pass_through()
    async with CacheStack([memory, layer], **options) as cache:  # type: ignore[arg-type]
        await cache.set_many({f"warm:{n}": "memory" for n in range(calls)})
        await cache.set_many({f"l2:{n}": "redis" for n in range(calls)})
        memory.delete_many_nowait([f"l2:{n}" for n in range(calls)])
        proxy.delay(latency / 2)

        async def warm(n: int) -> str:
            return str(await cache.get(f"warm:{n}"))

        async def l2(n: int) -> str:
            return str(await cache.get(f"l2:{n}", fetch))

        async def cold(n: int) -> str:
            return str(await cache.get(f"cold:{n}", fetch))

        results["L1 warm hit"] = await _time(calls, warm)
        results["L2 hit"] = await _time(calls, l2)
        results["cold miss"] = await _time(calls, cold)
        proxy.pass_through()
    async with CacheStack([RedisLayer(url=url, prefix=prefix)]) as cleaner:
        await cleaner.clear()
    return results


def _format(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.0f} ms"


MODES = ("strict", "graceful")
TITLE = "A slow Redis: strict vs graceful degradation"
Results = dict[tuple[str, float], dict[str, dict[str, Outcome]]]
"""(backend, timeout) -> mode -> scenario -> outcome."""


def table(results: Results, latency: float, calls: int) -> Table:
    rows = []
    for (backend, limit), run in results.items():
        for scenario in run["strict"]:
            row = [backend, f"{limit:g} s", scenario]
            for mode in MODES:
                first, rest, outcome = run[mode][scenario]
                row += [_format(first), _format(rest), outcome]
            rows.append(tuple(row))
    columns: tuple[str, ...] = ("backend", "Redis timeout", "scenario")
    for mode in MODES:
        columns += (f"{mode}: first call", f"{mode}: then (median)", f"{mode}: outcome")
    return Table(
        f"Calls through a proxy adding {latency * 1000:.0f} ms to each Redis round trip: "
        f"the first call, then the median of the next {calls - 1}",
        columns,
        tuple(rows),
        "graceful: `GracefulDegradation(retry_after=30)`; outcome: what the calls returned "
        "(`fetched` = the fetcher's value, `memory`/`redis` = the layer's).",
    )


def measure(latency: float, calls: int) -> Report:
    """Both backends, both timeouts, both modes, as a report."""
    logging.getLogger("layercache").setLevel(logging.CRITICAL)  # state changes are expected
    results: Results = {}
    with redis_server() as server:
        assert server.port is not None
        print_machine(LIBRARIES, ("server", server.where))
        with FaultProxy("127.0.0.1", server.port) as proxy:
            for backend in BACKENDS:
                for limit in (1.0, round(latency * 0.4, 3)):
                    results[backend, limit] = {
                        mode: anyio.run(
                            _scenarios,
                            proxy.url,
                            proxy,
                            latency,
                            limit,
                            calls,
                            mode == "graceful",
                            backend=backend,
                        )
                        for mode in MODES
                    }
    return Report(
        title=TITLE,
        tables=(table(results, latency, calls),),
        settings=f"{latency * 1000:.0f} ms added latency, {calls} calls per scenario",
    )


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    latency, calls = (0.05, 3) if quick else (0.5, 6)
    return measure_and_print(partial(measure, latency, calls))


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--latency", type=float, default=0.5, help="added round trip (s)")
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    measure_and_print(partial(measure, args.latency, args.calls))


if __name__ == "__main__":
    main()
