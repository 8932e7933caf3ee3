"""The stampede across processes (DESIGN §5: 4 processes x 100 callers with the coordinator
-> 1 fetch; 1 000 concurrent callers in one process -> 1 fetch).

Four worker processes (tests/stampede_worker.py) share a private redis-server; each runs
100 concurrent ``get``s of one missing key whose fetcher takes ``--latency`` seconds (the
origin's query). Three setups, each on asyncio and trio:

- *no cache*: every caller queries the origin;
- *memory + Redis*: single-flight within each process, so one query per process;
- *memory + Redis + coordinator*: ``RedisSingleFlightCoordinator``, one query in all.

Reported: origin queries in all, and the wall time from ``go`` until the last process
has answered its callers (median over runs). One more row checks the in-process target:
1 000 concurrent callers on one stack.

Usage: python benchmarks/bench_stampede.py [--runs 3] [--latency 0.05]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import anyio
from _harness import BACKENDS, command_line, measure_and_print, print_machine, redis_server
from _results import Report, Table, Verdict

from layercache import CacheStack, MemoryLayer

TITLE = "Stampede across processes"
WORKER = Path(__file__).resolve().parent.parent / "tests" / "stampede_worker.py"
LIBRARIES = ("layercache", "anyio", "trio")
PROCESSES = 4
CALLERS = 100
SETUPS = {
    "no cache": ["--no-cache"],
    "memory + Redis": [],
    "memory + Redis + coordinator": ["--coordinator"],
}
Results = dict[str, dict[str, tuple[int, float]]]
"""Backend -> setup -> (origin queries, the most over the runs; median wall seconds)."""


def _stampede(url: str, backend: str, options: list[str], latency: float) -> tuple[int, float]:
    """One stampede: (origin queries in all, seconds from go to the last answer)."""
    prefix = f"bench-stampede:{uuid.uuid4().hex[:8]}:"
    arguments = [
        sys.executable,
        str(WORKER),
        *("--url", url, "--prefix", prefix, "--callers", str(CALLERS), "--backend", backend),
        *("--latency", str(latency), *options),
    ]
    workers = [
        subprocess.Popen(arguments, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a worker did not start: {line!r}")
        started = time.perf_counter()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        fetches = 0
        for worker in workers:
            assert worker.stdout is not None
            for line in worker.stdout:
                if line.startswith("result "):
                    result = json.loads(line.removeprefix("result "))
                    if result["callers"] != CALLERS:
                        raise RuntimeError(f"a worker answered {result['callers']} callers")
                    fetches += result["fetches"]
                    break
            else:
                raise RuntimeError("a worker exited without a result")
        seconds = time.perf_counter() - started
        for worker in workers:
            worker.wait(timeout=30)
        return fetches, seconds
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            for pipe in (worker.stdin, worker.stdout):
                if pipe is not None:
                    pipe.close()


async def _one_process_stampede(latency: float) -> int:
    fetches = 0

    async def fetch() -> str:
        nonlocal fetches
        fetches += 1
        await anyio.sleep(latency)
        return "listing"

    async with CacheStack([MemoryLayer()]) as cache, anyio.create_task_group() as tasks:
        for _ in range(1000):
            tasks.start_soon(cache.get, "listing", fetch)
    return fetches


def targets(results: Results, in_process: dict[str, int]) -> list[Verdict]:
    verdicts = []
    for backend, setups in results.items():
        queries, _ = setups["memory + Redis + coordinator"]
        verdicts.append(
            Verdict.check(
                "stampede-processes",
                queries == 1,
                backend,
                "4 processes x 100 callers with the coordinator -> 1 fetch",
                f"{queries} (the most over the runs)",
            )
        )
        verdicts.append(
            Verdict.check(
                "stampede-process",
                in_process[backend] == 1,
                backend,
                "1 000 concurrent callers -> 1 fetch",
                str(in_process[backend]),
            )
        )
    return verdicts


def table(results: Results, latency: float) -> Table:
    columns = ["setup"]
    for backend in results:
        columns += [f"{backend} queries", f"{backend} wall ms"]
    rows = []
    for name in SETUPS:
        row = [name]
        for setups in results.values():
            queries, wall = setups[name]
            row += [str(queries), f"{wall * 1000:.1f}"]
        rows.append(tuple(row))
    return Table(
        f"{PROCESSES} processes x {CALLERS} callers, origin latency {latency * 1000:.0f} ms",
        tuple(columns),
        tuple(rows),
        "queries: origin fetches in all processes (the most over the runs); wall ms: from "
        "`go` until every process has answered its callers (median of the runs), which "
        "includes the waiters' polling of Redis.",
    )


def measure(runs: int, latency: float) -> Report:
    """Every setup on both backends, and the in-process stampede, as a report."""
    results: Results = {}
    in_process: dict[str, int] = {}
    with redis_server() as server:
        print_machine(LIBRARIES, ("server", server.where))
        for backend in BACKENDS:
            results[backend] = {}
            for name, options in SETUPS.items():
                outcomes = [_stampede(server.url, backend, options, latency) for _ in range(runs)]
                queries = max(fetches for fetches, _ in outcomes)
                wall = statistics.median(seconds for _, seconds in outcomes)
                results[backend][name] = (queries, wall)
            in_process[backend] = anyio.run(_one_process_stampede, latency, backend=backend)
    return Report(
        title=TITLE,
        tables=(table(results, latency),),
        verdicts=tuple(targets(results, in_process)),
        settings=f"{runs} runs, origin latency {latency * 1000:.0f} ms",
    )


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    runs, latency = (1, 0.02) if quick else (3, 0.05)
    return measure_and_print(partial(measure, runs, latency))


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    measure_and_print(partial(measure, args.runs, args.latency))


if __name__ == "__main__":
    main()
