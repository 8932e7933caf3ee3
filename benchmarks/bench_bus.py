"""Cross-instance invalidation latency (DESIGN §5: at most 1.5x a raw PUBLISH to subscriber).

Two stacks A and B share a private redis-server and a bus channel. One round: B holds
key k in its memory layer; A runs ``await a.set(k, value)``; the clock stops when B's
listener has applied the message (B's memory actor drops k in its next turn). The peer
is a bare PUBLISH on one connection received by a bare SUBSCRIBE on another (hiredis on
anyio streams), the least any bus can cost. Both are timed in one process, interleaved,
on asyncio and trio; medians of several runs.

Two stack shapes: memory + bus (the set publishes at once) and memory + Redis layer +
bus (the set first writes Redis, then publishes: the value must be there before peers
are told to reload it).

Usage: python benchmarks/bench_bus.py [--rounds 300] [--runs 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack

import anyio
from _machine import cpu_model, source_revision, version
from _results import Comparison, Report, Table, Verdict, capture_stdout

from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer, Write
from layercache._redis._address import parse_redis_url
from layercache._redis._connection import Connection, pack
from layercache.testing import RedisServer

Round = Callable[[int], Awaitable[None]]


async def _raw_round_trip(stack: AsyncExitStack, url: str) -> Round:
    address = parse_redis_url(url)
    channel = f"bench-raw:{uuid.uuid4().hex}"
    publisher = await Connection.open(address)
    subscriber = await Connection.open(address)
    stack.push_async_callback(publisher.aclose)
    stack.push_async_callback(subscriber.aclose)
    await subscriber.send(pack([("SUBSCRIBE", channel)]))
    await subscriber.receive()

    async def one(n: int) -> None:
        await publisher.send(pack([("PUBLISH", channel, b"k%d" % n)]))
        got = False
        while not got:
            for reply in await subscriber.receive():
                got = got or (isinstance(reply, list) and reply[0] == b"message")
        while not await publisher.receive():  # the PUBLISH reply, so the next round starts clean
            pass

    return one


async def _stacks(stack: AsyncExitStack, url: str, with_redis: bool) -> Round:
    prefix = f"bench-bus:{uuid.uuid4().hex[:8]}:"
    channel = f"{prefix}invalidation"

    def layers() -> list[MemoryLayer | RedisLayer]:
        if with_redis:
            return [MemoryLayer(), RedisLayer(url=url, prefix=prefix)]
        return [MemoryLayer()]

    a = await stack.enter_async_context(
        CacheStack(layers(), invalidation_bus=RedisInvalidationBus(url, channel=channel))
    )
    b = await stack.enter_async_context(
        CacheStack(layers(), invalidation_bus=RedisInvalidationBus(url, channel=channel))
    )
    listener = b._listener
    assert listener is not None
    memory = b.layers[0]
    assert isinstance(memory, MemoryLayer)

    async def one(n: int) -> None:
        memory.write_many_nowait([Write("k", n, None)])  # B holds k (no bus message)
        expected = listener.received + 1
        await a.set("k", n)
        await listener.wait_received(expected)

    return one


async def _measure(url: str, rounds: int, runs: int) -> dict[str, float]:
    medians: dict[str, list[float]] = {"raw": [], "memory + bus": [], "memory + redis + bus": []}
    async with AsyncExitStack() as stack:
        contenders = {
            "raw": await _raw_round_trip(stack, url),
            "memory + bus": await _stacks(stack, url, with_redis=False),
            "memory + redis + bus": await _stacks(stack, url, with_redis=True),
        }
        for one in contenders.values():
            for n in range(20):
                await one(n)
        for run in range(runs):
            names = list(contenders)
            names = names[run % len(names) :] + names[: run % len(names)]
            for name in names:
                times = []
                for n in range(rounds):
                    started = time.perf_counter()
                    await contenders[name](n)
                    times.append(time.perf_counter() - started)
                medians[name].append(statistics.median(times))
    return {name: statistics.median(values) for name, values in medians.items()}


STACKS = ("memory + bus", "memory + redis + bus")
TITLE = "Cross-instance invalidation"


def targets(results: Mapping[str, Mapping[str, float]]) -> list[Verdict]:
    """One verdict per stack shape and backend: delivery <= 1.5x the raw round trip."""
    verdicts = []
    for backend, result in results.items():
        for name in STACKS:
            factor = result[name] / result["raw"]
            verdicts.append(
                Verdict.check(
                    "invalidation",
                    factor <= 1.5,
                    backend,
                    f"{name} delivery <= 1.5x raw PUBLISH->subscriber",
                    f"{result[name] * 1e6:.1f} us vs {result['raw'] * 1e6:.1f} us = "
                    f"{factor:.2f}x raw",
                )
            )
    return verdicts


def measure_and_print(rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Both backends, printed as the script prints them: seconds per contender."""
    logging.getLogger("layercache").setLevel(logging.ERROR)
    print(
        f"CPU {cpu_model()}; anyio {version('anyio')}, trio {version('trio')}; "
        f"layercache git {source_revision()}"
    )
    results: dict[str, dict[str, float]] = {}
    with RedisServer() as server:
        print(f"{server.binary.product} {server.binary.version}, private, loopback")
        print(f"median of {runs} runs of the median of {rounds} rounds\n")
        print(f"{'backend':8} {'contender':22} {'µs':>8} {'vs raw':>8}")
        for backend in ("asyncio", "trio"):
            result = anyio.run(_measure, server.url, rounds, runs, backend=backend)
            results[backend] = result
            raw = result["raw"]
            for name, seconds in result.items():
                print(f"{backend:8} {name:22} {seconds * 1e6:8.1f} {seconds / raw:7.2f}x")
    print("\nDESIGN §5: cross-instance invalidation delivery <= 1.5x raw PUBLISH->subscriber")
    for verdict in targets(results):
        print("  " + verdict.line)
    return results


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    rounds, runs = (30, 2) if quick else (300, 5)
    with capture_stdout() as printed:
        results = measure_and_print(rounds, runs)
    backends = tuple(results)
    columns = ["contender"]
    for backend in backends:
        columns += [f"{backend} us", f"{backend} vs raw"]
    rows = []
    for name in ("raw", *STACKS):
        row = [name]
        for backend in backends:
            seconds = results[backend][name]
            row += [f"{seconds * 1e6:.1f}", f"{seconds / results[backend]['raw']:.2f}x"]
        rows.append(tuple(row))
    table = Table(
        f"Invalidation delivery: median of {runs} runs of the median of {rounds} rounds",
        tuple(columns),
        tuple(rows),
        "us: from `await a.set(k, v)` until B's listener has applied the message; *raw*: "
        "a bare PUBLISH until a bare subscriber has it. vs raw: the row's time ÷ raw's, "
        "same backend and run; DESIGN §5 asks for at most 1.50x.",
    )
    comparisons = tuple(
        Comparison(
            "Invalidation delivery (the peer: a raw PUBLISH → subscriber)",
            f"layercache {name}",
            backend,
            results[backend]["raw"] / results[backend][name],
            1 / 1.5,
        )
        for name in STACKS
        for backend in backends
    )
    return Report(
        title=TITLE,
        tables=(table,),
        verdicts=tuple(targets(results)),
        comparisons=comparisons,
        settings=f"{runs} runs of {rounds} rounds",
        output=printed.text,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    measure_and_print(args.rounds, args.runs)


if __name__ == "__main__":
    main()
