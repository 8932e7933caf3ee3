"""One process of a multi-process stampede (tests/integration/test_multiprocess.py, and
benchmarks/bench_stampede.py).

It opens a stack (memory + Redis, optionally the Redis single-flight coordinator), says
``ready``, waits for ``go`` on stdin, then runs ``--callers`` concurrent ``get``s of one
key. Lines it prints, for the parent to follow:

- ``ready``: the stack is open;
- ``waiting``: this process found the key's lock held elsewhere and waits for the value;
- ``fetching``: this process's fetcher started (with ``--gate`` it then waits for a
  ``finish`` line on stdin before it returns);
- ``result {json}``: at the end, the fetches, the values the callers got and the
  coordinator's counters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from layercache import CacheStack, MemoryLayer, RedisLayer, RedisSingleFlightCoordinator
from layercache._distributed import Wait


def say(line: str) -> None:
    print(line, flush=True)


async def read_line() -> str:
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def main(arguments: argparse.Namespace) -> None:
    coordinator = None
    if arguments.coordinator:
        coordinator = RedisSingleFlightCoordinator(
            arguments.url, lease=arguments.lease, wait_timeout=arguments.wait_timeout
        )
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(url=arguments.url, prefix=arguments.prefix)],
        single_flight_coordinator=coordinator,
    )
    fetches = 0

    async def fetch() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        say("fetching")
        if arguments.gate:
            line = await read_line()
            assert line == "finish", line
        else:
            await anyio.sleep(arguments.latency)  # the origin's query time
        return {"pid": os.getpid(), "listing": list(range(10))}

    async with stack as cache:
        if coordinator is not None:
            original = coordinator.waiting

            def waiting() -> Wait:
                say("waiting")
                return original()

            coordinator.waiting = waiting  # type: ignore[method-assign]
        say("ready")
        line = await read_line()
        assert line == "go", line
        values: list[Any] = []
        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for _ in range(arguments.callers):

                async def call() -> None:
                    if arguments.no_cache:
                        values.append(await fetch())
                    else:
                        values.append(await cache.get(arguments.key, fetch))

                tasks.start_soon(call)
        seconds = time.perf_counter() - started
        stats = cache.statistics().coordinator
        say(
            "result "
            + json.dumps(
                {
                    "pid": os.getpid(),
                    "fetches": fetches,
                    "callers": len(values),
                    "pids": sorted({value["pid"] for value in values}),
                    "distinct": len({json.dumps(value, sort_keys=True) for value in values}),
                    "seconds": seconds,
                    "acquired": stats.acquired if stats else 0,
                    "waits": stats.waits if stats else 0,
                    "takeovers": stats.takeovers if stats else 0,
                }
            )
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--key", default="listing")
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--coordinator", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="every caller fetches")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--wait-timeout", type=float, default=5.0)
    parser.add_argument("--gate", action="store_true", help="fetchers wait for 'finish'")
    parser.add_argument("--latency", type=float, default=0.05)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    anyio.run(main, options, backend=options.backend)
