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

With ``--refresh SECONDS`` the callers instead read the key over and over for that long
(yielding between reads), with a ``--ttl`` and ``Freshness(refresh_ahead=0.5)``, on a stack with the
invalidation bus: the refresh-ahead test of many processes sharing one hot key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from layercache import (
    CacheStack,
    Freshness,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
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
    refreshing = arguments.refresh is not None
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(url=arguments.url, prefix=arguments.prefix)],
        single_flight_coordinator=coordinator,
        invalidation_bus=(
            RedisInvalidationBus(arguments.url, channel=arguments.prefix + "bus")
            if refreshing
            else None
        ),
        freshness=Freshness(refresh_ahead=0.5) if refreshing else None,
    )
    fetches = 0

    async def fetch() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        if not refreshing:
            say("fetching")
        if arguments.gate:
            line = await read_line()
            assert line == "finish", line
        else:
            await anyio.sleep(arguments.latency)  # the origin's query time
        return {"pid": os.getpid(), "listing": list(range(10))}

    async with stack as cache:
        if coordinator is not None and not refreshing:
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
                    elif refreshing:
                        values.append(await read_for(cache, arguments, fetch))
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
                    "refreshes": cache.statistics().refreshes,
                }
            )
        )


async def read_for(cache: CacheStack, arguments: argparse.Namespace, fetch: Any) -> Any:
    """Read the key for ``--refresh`` seconds; the last value read."""
    until = time.monotonic() + arguments.refresh
    value = await cache.get(arguments.key, fetch, ttl=arguments.ttl)
    while time.monotonic() < until:
        await anyio.lowlevel.checkpoint()  # let the other readers and the refresh run
        value = await cache.get(arguments.key, fetch, ttl=arguments.ttl)
    return value


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
    parser.add_argument("--refresh", type=float, help="read the key this many seconds")
    parser.add_argument("--ttl", type=float, default=1.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    anyio.run(main, options, backend=options.backend)
