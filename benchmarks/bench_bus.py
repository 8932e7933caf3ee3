"""Cross-instance invalidation latency (DESIGN §5: at most 1.5x a raw PUBLISH to subscriber).

Two stacks A and B share a private redis-server and a bus channel. One round: B holds
key k in its memory layer; A starts ``await a.set(k, value)``; the clock stops when B's
memory layer has dropped k (B's listener applies the message there and then; the time is
taken right after). The peer is a bare PUBLISH on one connection received by a bare
SUBSCRIBE on another (hiredis on anyio streams), the least any bus can cost; its clock
stops when the subscriber has the message. Like ``a.set``, which returns once Redis has
answered, the bare publisher reads its replies before the round ends (after B had the
message, so it costs the delivery nothing).

Two stack shapes: memory + bus (the set publishes at once), compared with the bare
PUBLISH; and memory + Redis layer + bus (the set writes Redis and publishes in one
batch on the layer's connection, which Redis runs in order: the value is there before
any peer hears of it), compared with the same Redis work done raw at its fastest, a bare
SET and PUBLISH in one batch. A bare SET round trip followed by a bare PUBLISH (what a
client that waits for each reply does) is shown too.

Each contender is measured against its peer, the two taking turns round after round, so
drifts of the machine's speed reach both alike; a run's ratio compares the medians of
those interleaved rounds. Reported: the median over the runs, and the runs' range.

Usage: python benchmarks/bench_bus.py [--rounds 400] [--runs 7]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
from _bus_peer import Subscriber, layers, stamp_invalidations
from _machine import cpu_model, source_revision, version
from _results import Comparison, Report, Table, Verdict, capture_stdout

from layercache import CacheStack, RedisInvalidationBus
from layercache._backend import running_library
from layercache._redis._address import parse_redis_url
from layercache._redis._connection import Command, Connection, pack
from layercache.testing import RedisServer

PEER = Path(__file__).resolve().parent / "_bus_peer.py"
Round = Callable[[int], Awaitable[float]]
"""One round; returns the delivery time in seconds."""


class _Receiver(Protocol):
    async def had_it_at(self) -> float:
        """When B had the next invalidation (``time.perf_counter()``)."""
        ...


class _LocalB:
    """Instance B on this event loop."""

    def __init__(self, b: CacheStack) -> None:
        listener = b._listener
        assert listener is not None
        self._listener = listener
        self._expected = listener.received
        self._applied = 0.0

        def stamped(applied: float) -> None:
            self._applied = applied

        stamp_invalidations(b, stamped)

    async def had_it_at(self) -> float:
        self._expected += 1
        await self._listener.wait_received(self._expected)
        return self._applied


class _Peer:
    """Instance B in a process of its own (benchmarks/_bus_peer.py): it prints when it
    had each invalidation, on the system's monotonic clock."""

    def __init__(self, url: str, channel: str, mode: str, prefix: str, backend: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PEER), url, channel, mode, prefix, backend],
            stdout=subprocess.PIPE,
            text=True,
        )

    async def next_line(self) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        line: str = await anyio.to_thread.run_sync(stdout.readline)
        if not line:
            raise RuntimeError("the peer process exited")
        return line.strip()

    async def had_it_at(self) -> float:
        return float(await self.next_line())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


async def _peer(stack: AsyncExitStack, url: str, channel: str, mode: str, prefix: str) -> _Peer:
    peer = _Peer(url, channel, mode, prefix, running_library())
    stack.callback(peer.stop)
    if await peer.next_line() != "ready":
        raise RuntimeError("the peer process did not start")
    return peer


async def _raw(stack: AsyncExitStack, url: str, work: str, processes: bool) -> Round:
    """A bare PUBLISH; with ``work`` "batch", a bare SET sent with it; with "then", a
    bare SET round trip before it."""
    channel = f"bench-raw:{uuid.uuid4().hex}"
    receiver: _Receiver
    if processes:
        receiver = await _peer(stack, url, channel, "raw", "")
    else:
        subscriber = await Subscriber.open(url, channel)
        stack.push_async_callback(subscriber.connection.aclose)
        receiver = subscriber
    publisher = await Connection.open(parse_redis_url(url))
    stack.push_async_callback(publisher.aclose)
    name = f"bench-raw:{channel}"

    async def one(n: int) -> float:
        started = time.perf_counter()
        if work == "then":
            await publisher.call([("SET", name, b"v%d" % n)])
        commands: list[Command] = [("PUBLISH", channel, b"k%d" % n)]
        if work == "batch":
            commands.insert(0, ("SET", name, b"v%d" % n))
        await publisher.send(pack(commands))
        replies = 0
        while replies < len(commands):  # as a client's publish does: wait for Redis
            replies += len(await publisher.receive())
        return await receiver.had_it_at() - started

    return one


async def _stacks(stack: AsyncExitStack, url: str, with_redis: bool, processes: bool) -> Round:
    """``a.set(k)`` on A until B has dropped k."""
    prefix = f"bench-bus:{uuid.uuid4().hex[:8]}:"
    channel = f"{prefix}invalidation"
    receiver: _Receiver
    if processes:
        mode = "stack+redis" if with_redis else "stack"
        receiver = await _peer(stack, url, channel, mode, prefix)
    else:
        bus = RedisInvalidationBus(url, channel=channel)
        b = CacheStack(layers(url, prefix, with_redis), invalidation_bus=bus)
        receiver = _LocalB(await stack.enter_async_context(b))
    bus = RedisInvalidationBus(url, channel=channel)
    a = CacheStack(layers(url, prefix, with_redis), invalidation_bus=bus)
    a = await stack.enter_async_context(a)

    async def one(n: int) -> float:
        started = time.perf_counter()
        await a.set("k", n)
        return await receiver.had_it_at() - started

    return one


async def _measure(
    url: str, rounds: int, runs: int, processes: bool
) -> list[dict[str, dict[str, float]]]:
    """Each run's median delivery (seconds) per pair and contender: each pair of
    :data:`PAIRS` has its own rounds, the two taking turns, so neither is measured
    beside work that is not the pair's."""
    async with AsyncExitStack() as stack:
        contenders = {
            RAW: await _raw(stack, url, "publish", processes),
            "memory + bus": await _stacks(stack, url, False, processes),
            RAW_BATCH: await _raw(stack, url, "batch", processes),
            "memory + redis + bus": await _stacks(stack, url, True, processes),
            RAW_THEN: await _raw(stack, url, "then", processes),
        }
        for one in contenders.values():
            for n in range(20):
                await one(n)
        results = []
        for run in range(runs):
            measured: dict[str, dict[str, float]] = {}
            for name, peer in PAIRS.items():
                pair = (name, peer) if run % 2 else (peer, name)
                times: dict[str, list[float]] = {name: [], peer: []}
                for n in range(rounds):
                    for contender in pair if n % 2 else pair[::-1]:
                        times[contender].append(await contenders[contender](n))
                measured[name] = {who: statistics.median(values) for who, values in times.items()}
            results.append(measured)
    return results


RAW = "raw PUBLISH"
RAW_BATCH = "raw SET + PUBLISH, one batch"
RAW_THEN = "raw SET, then PUBLISH"
CONTENDERS = (RAW, "memory + bus", RAW_BATCH, "memory + redis + bus", RAW_THEN)
STACKS = {"memory + bus": RAW, "memory + redis + bus": RAW_BATCH}
"""Each stack shape and the raw contender doing the same Redis work (its target's peer)."""
PAIRS = {**STACKS, RAW_THEN: RAW_BATCH}
"""Each contender measured against a peer, and that peer (round after round, in turns)."""
PEERS = {**PAIRS, RAW: RAW, RAW_BATCH: RAW_BATCH}
"""What each row's ratio is taken against (a peer against itself)."""
TITLE = "Cross-instance invalidation"


class Result:
    """One backend's runs: medians over the runs, and each ratio's range."""

    def __init__(self, runs: list[dict[str, dict[str, float]]]) -> None:
        self.runs = runs

    @staticmethod
    def _pair(name: str) -> str:
        """The pair a contender's figures come from (a peer's: its stack's)."""
        if name in PAIRS:
            return name
        return next(stack for stack, peer in STACKS.items() if peer == name)

    def seconds(self, name: str) -> float:
        pair = self._pair(name)
        return statistics.median(run[pair][name] for run in self.runs)

    def ratios(self, name: str, peer: str) -> list[float]:
        pair = self._pair(name)
        return [run[pair][name] / run[pair][peer] for run in self.runs]

    def ratio(self, name: str, peer: str) -> float:
        """The median over the runs of the run's ratio (both from the same rounds)."""
        return statistics.median(self.ratios(name, peer))

    def spread(self, name: str, peer: str) -> str:
        ratios = self.ratios(name, peer)
        return f"{min(ratios):.2f}-{max(ratios):.2f}x"


Results = dict[str, Result]
"""Backend -> its runs."""
SETUPS = {
    "two processes": "B in a process of its own, as instances are",
    "one process": "A and B on one event loop, sharing its thread",
}


def targets(results: Mapping[str, Result], setup: str) -> list[Verdict]:
    """One verdict per stack shape and backend: delivery <= 1.5x its raw counterpart.
    Checked on two processes (instances are separate processes); the one-process
    figures are shown beside them, as information."""
    verdicts = []
    for backend, result in results.items():
        for name, peer in STACKS.items():
            factor = result.ratio(name, peer)
            goal = f"{name} delivery <= 1.5x {peer} -> subscriber, {setup}"
            measured = (
                f"{result.seconds(name) * 1e6:.1f} us vs {result.seconds(peer) * 1e6:.1f} us: "
                f"{factor:.2f}x (runs {result.spread(name, peer)})"
            )
            if setup == "two processes":
                verdicts.append(
                    Verdict.check("invalidation", factor <= 1.5, backend, goal, measured)
                )
            else:
                verdicts.append(Verdict("invalidation", "info", backend, goal, measured))
    return verdicts


def measure_and_print(rounds: int, runs: int) -> dict[str, Results]:
    """Both setups and both backends, printed as the script prints them."""
    logging.getLogger("layercache").setLevel(logging.ERROR)
    print(
        f"CPU {cpu_model()}; anyio {version('anyio')}, trio {version('trio')}; "
        f"layercache git {source_revision()}"
    )
    measured: dict[str, Results] = {}
    with RedisServer() as server:
        print(f"{server.binary.product} {server.binary.version}, private, loopback")
        print(f"median of {runs} runs of {rounds} rounds for each contender and its peer, in turns")
        for setup, what in SETUPS.items():
            print(f"\n{setup}: {what}")
            print(f"{'backend':8} {'contender':29} {'µs':>8} {'vs':>6}  {'runs':>11}  vs")
            results: Results = {}
            for backend in ("asyncio", "trio"):
                runs_measured = anyio.run(
                    _measure, server.url, rounds, runs, setup == "two processes", backend=backend
                )
                result = results[backend] = Result(runs_measured)
                for name in CONTENDERS:
                    peer = PEERS[name]
                    print(
                        f"{backend:8} {name:29} {result.seconds(name) * 1e6:8.1f} "
                        f"{result.ratio(name, peer):5.2f}x  {result.spread(name, peer):>11}  "
                        f"{'-' if peer == name else peer}"
                    )
            measured[setup] = results
    print("\nDESIGN §5: cross-instance invalidation delivery <= 1.5x raw PUBLISH->subscriber")
    for setup, results in measured.items():
        for verdict in targets(results, setup):
            print("  " + verdict.line)
    return measured


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    rounds, runs = (30, 2) if quick else (400, 7)
    with capture_stdout() as printed:
        measured = measure_and_print(rounds, runs)
    tables = []
    for setup, results in measured.items():
        backends = tuple(results)
        columns = ["contender", "ratio to"]
        for backend in backends:
            columns += [f"{backend} us", f"{backend} ratio", f"{backend} runs"]
        rows = []
        for name in CONTENDERS:
            peer = PEERS[name]
            row = [name, "" if peer == name else peer]
            for backend in backends:
                result = results[backend]
                row += [
                    f"{result.seconds(name) * 1e6:.1f}",
                    f"{result.ratio(name, peer):.2f}x",
                    result.spread(name, peer),
                ]
            rows.append(tuple(row))
        tables.append(
            Table(
                f"Invalidation delivery, {setup} ({SETUPS[setup]}): median of {runs} runs "
                f"of {rounds} rounds of each contender beside its peer, in turns",
                tuple(columns),
                tuple(rows),
                "us: from the start of `await a.set(k, v)` until B's memory layer has "
                "dropped k; *raw*: from a bare PUBLISH until a bare subscriber has it (*raw "
                "SET + PUBLISH, one batch*: both commands in one write, the Redis work a set "
                "on a stack with a Redis layer does; *raw SET, then PUBLISH*: the SET's "
                "round trip first). ratio: the row's time ÷ the *ratio to* row's, in the "
                "same run, median over the runs; runs: the lowest and highest run's ratio. "
                "DESIGN §5 asks for at most 1.50x (checked on two processes).",
            )
        )
    separate = measured["two processes"]
    comparisons = tuple(
        Comparison(
            "Invalidation delivery, two processes (the peer: the same Redis work done raw)",
            f"layercache {name}",
            backend,
            1 / separate[backend].ratio(name, peer),
            1 / 1.5,
        )
        for name, peer in STACKS.items()
        for backend in separate
    )
    verdicts = [v for setup, results in measured.items() for v in targets(results, setup)]
    return Report(
        title=TITLE,
        tables=tuple(tables),
        verdicts=tuple(verdicts),
        comparisons=comparisons,
        settings=f"{runs} runs of {rounds} rounds per contender and peer, in turns",
        output=printed.text,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    measure_and_print(args.rounds, args.runs)


if __name__ == "__main__":
    main()
