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

import argparse
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
from _results import Report, Table, capture_stdout

from layercache import (
    CacheStack,
    GracefulDegradation,
    LayerUnavailableError,
    MemoryLayer,
    RedisLayer,
)
from layercache.testing import FaultProxy, RedisServer

Row = tuple[str, str, float, str, float, str]


async def _time(calls: int, call: Callable[[int], Awaitable[str]]) -> tuple[float, float, str]:
    """The first call's seconds, the median of the others, and what they returned."""
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
) -> dict[str, tuple[float, float, str]]:
    prefix = f"bench-faults:{uuid.uuid4().hex[:8]}:"
    memory = MemoryLayer()
    layer = RedisLayer(url=url, prefix=prefix, timeout=limit)
    options = {"graceful_degradation": GracefulDegradation(retry_after=30)} if graceful else {}
    results: dict[str, tuple[float, float, str]] = {}

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
Results = dict[tuple[str, float], dict[str, dict[str, tuple[float, float, str]]]]
"""(backend, timeout) -> mode -> scenario -> (first call, median of the others, outcomes)."""


def measure_and_print(latency: float, calls: int) -> Results:
    """Both backends, both timeouts, both modes, printed as the script prints them."""
    logging.getLogger("layercache").setLevel(logging.CRITICAL)  # state changes are expected
    results: Results = {}
    with RedisServer() as server:
        assert server.port is not None
        with FaultProxy("127.0.0.1", server.port) as proxy:
            print(
                f"{server.binary.product} {server.binary.version} behind a proxy adding "
                f"{latency * 1000:.0f} ms to each round trip; per mode: the first call, "
                f"then the median of the next {calls - 1}\n"
            )
            columns = ("backend", "timeout", "scenario", "strict", "graceful")
            print(f"{columns[0]:8} {columns[1]:>7} {columns[2]:12} {columns[3]:45} {columns[4]}")
            for backend in ("asyncio", "trio"):
                for limit in (1.0, round(latency * 0.4, 3)):
                    run = {
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
                    results[backend, limit] = run
                    for scenario in run["strict"]:
                        cells = []
                        for mode in MODES:
                            first, rest, outcome = run[mode][scenario]
                            cells.append(f"{_format(first):>8} then {_format(rest):>8}  {outcome}")
                        print(f"{backend:8} {limit:>6.2f}s {scenario:12} {cells[0]:45} {cells[1]}")
    return results


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    latency, calls = (0.05, 3) if quick else (0.5, 6)
    with capture_stdout() as printed:
        results = measure_and_print(latency, calls)
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
    table = Table(
        f"Calls through a proxy adding {latency * 1000:.0f} ms to each Redis round trip: "
        f"the first call, then the median of the next {calls - 1}",
        columns,
        tuple(rows),
        "graceful: `GracefulDegradation(retry_after=30)`; outcome: what the calls returned "
        "(`fetched` = the fetcher's value, `memory`/`redis` = the layer's).",
    )
    return Report(
        title=TITLE,
        tables=(table,),
        settings=f"{latency * 1000:.0f} ms added latency, {calls} calls per scenario",
        output=printed.text,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.5, help="added round trip (s)")
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    measure_and_print(args.latency, args.calls)


if __name__ == "__main__":
    main()
