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

import logging
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
from _bus_peer import Subscriber, layers, stamp_invalidations
from _harness import (
    BACKENDS,
    Contender,
    Samples,
    command_line,
    measure_and_print,
    print_machine,
    redis_server,
    take_turns,
)
from _results import Comparison, Report, Table, Verdict

from layercache import CacheStack, RedisInvalidationBus
from layercache._backend import running_library
from layercache._redis._address import parse_redis_url
from layercache._redis._connection import Command, Connection, pack
from layercache.testing import invalidations_received

PEER = Path(__file__).resolve().parent / "_bus_peer.py"
LIBRARIES = ("layercache", "anyio", "trio")
Round = Callable[[int], Awaitable[float]]
"""One round; returns the delivery time in seconds."""


@dataclass(frozen=True)
class Where:
    """What every contender gets: the server, and whether B runs in a process of its own."""

    url: str
    processes: bool


class _Receiver(Protocol):
    async def had_it_at(self) -> float:
        """When B had the next invalidation (``time.perf_counter()``)."""
        ...


class _LocalB:
    """Instance B on this event loop."""

    def __init__(self, b: CacheStack) -> None:
        self._b = b
        self._expected = b.statistics().invalidations_received
        self._applied = 0.0

        def stamped(applied: float) -> None:
            self._applied = applied

        stamp_invalidations(b, stamped)

    async def had_it_at(self) -> float:
        self._expected += 1
        await invalidations_received(self._b, self._expected)
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


async def _raw(work: str, stack: AsyncExitStack, where: Where) -> Round:
    """A bare PUBLISH; with ``work`` "batch", a bare SET sent with it; with "then", a
    bare SET round trip before it."""
    url = where.url
    channel = f"bench-raw:{uuid.uuid4().hex}"
    receiver: _Receiver
    if where.processes:
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


async def _stacks(with_redis: bool, stack: AsyncExitStack, where: Where) -> Round:
    """``a.set(k)`` on A until B has dropped k."""
    url = where.url
    prefix = f"bench-bus:{uuid.uuid4().hex[:8]}:"
    channel = f"{prefix}invalidation"
    receiver: _Receiver
    if where.processes:
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


RAW = "raw PUBLISH"
RAW_BATCH = "raw SET + PUBLISH, one batch"
RAW_THEN = "raw SET, then PUBLISH"
CONTENDERS: tuple[Contender[Where, Round], ...] = (
    Contender(RAW, partial(_raw, "publish")),
    Contender("memory + bus", partial(_stacks, False)),
    Contender(RAW_BATCH, partial(_raw, "batch")),
    Contender("memory + redis + bus", partial(_stacks, True)),
    Contender(RAW_THEN, partial(_raw, "then")),
)
STACKS = {"memory + bus": RAW, "memory + redis + bus": RAW_BATCH}
"""Each stack shape and the raw contender doing the same Redis work (its target's peer)."""
PAIRS = {**STACKS, RAW_THEN: RAW_BATCH}
"""Each contender measured against a peer, and that peer (round after round, in turns)."""
PEERS = {**PAIRS, RAW: RAW, RAW_BATCH: RAW_BATCH}
"""What each row's ratio is taken against (a peer against itself)."""
TITLE = "Cross-instance invalidation"


class Result:
    """One backend's runs: per pair of :data:`PAIRS`, each run's median delivery (seconds)
    of the contender and of its peer, measured in turns."""

    def __init__(self, backend: str) -> None:
        self.samples = {
            (pair, who): Samples(who, backend)
            for pair, peer in PAIRS.items()
            for who in (pair, peer)
        }

    @staticmethod
    def _pair(name: str) -> str:
        """The pair a contender's figures come from (a peer's: its stack's)."""
        if name in PAIRS:
            return name
        return next(stack for stack, peer in STACKS.items() if peer == name)

    def seconds(self, name: str) -> float:
        """The median over the runs."""
        return self.samples[self._pair(name), name].median

    def ratios(self, name: str, peer: str) -> list[float]:
        pair = self._pair(name)
        ours, theirs = self.samples[pair, name].values, self.samples[pair, peer].values
        return [a / b for a, b in zip(ours, theirs, strict=True)]

    def ratio(self, name: str, peer: str) -> float:
        """The median over the runs of the run's ratio (both from the same rounds)."""
        return statistics.median(self.ratios(name, peer))

    def spread(self, name: str, peer: str) -> str:
        ratios = self.ratios(name, peer)
        return f"{min(ratios):.2f}-{max(ratios):.2f}x"


async def _measure(where: Where, rounds: int, runs: int, backend: str) -> Result:
    """Each pair of :data:`PAIRS` has its own rounds, the two taking turns, so neither is
    measured beside work that is not the pair's."""
    result = Result(backend)
    async with AsyncExitStack() as stack:
        contenders = {c.name: await c.setup(stack, where) for c in CONTENDERS}
        for one in contenders.values():
            for n in range(20):
                await one(n)
        for run in range(runs):
            for name, peer in PAIRS.items():
                times: dict[str, list[float]] = {name: [], peer: []}
                for n in range(rounds):
                    timed = [(times[who], partial(contenders[who], n)) for who in (name, peer)]
                    await take_turns(run + n, timed, settle=False)
                for who, values in times.items():
                    result.samples[name, who].values.append(statistics.median(values))
    return result


Results = dict[str, Result]
"""Backend -> its runs."""
SETUPS = {
    "two processes": "B in a process of its own, as instances are",
    "one process": "A and B on one event loop, sharing its thread",
}


def targets(results: Results, setup: str) -> list[Verdict]:
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


def table(results: Results, setup: str, rounds: int, runs: int) -> Table:
    columns = ["contender", "ratio to"]
    for backend in results:
        columns += [f"{backend} us", f"{backend} ratio", f"{backend} runs"]
    rows = []
    for contender in CONTENDERS:
        name, peer = contender.name, PEERS[contender.name]
        row = [name, "" if peer == name else peer]
        for result in results.values():
            row += [
                f"{result.seconds(name) * 1e6:.1f}",
                f"{result.ratio(name, peer):.2f}x",
                result.spread(name, peer),
            ]
        rows.append(tuple(row))
    return Table(
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


def measure(rounds: int, runs: int) -> Report:
    """Both setups and both backends, as a report."""
    logging.getLogger("layercache").setLevel(logging.ERROR)
    measured: dict[str, Results] = {}
    with redis_server() as server:
        print_machine(LIBRARIES, ("server", server.where))
        for setup in SETUPS:
            where = Where(server.url, setup == "two processes")
            measured[setup] = {
                backend: anyio.run(_measure, where, rounds, runs, backend, backend=backend)
                for backend in BACKENDS
            }
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
    return Report(
        title=TITLE,
        tables=tuple(table(results, setup, rounds, runs) for setup, results in measured.items()),
        verdicts=tuple(v for setup, results in measured.items() for v in targets(results, setup)),
        comparisons=comparisons,
        settings=f"{runs} runs of {rounds} rounds per contender and peer, in turns",
    )


def run(quick: bool = False) -> Report:
    """The report's entry point (see benchmarks/_results.py)."""
    rounds, runs = (30, 2) if quick else (400, 7)
    return measure_and_print(partial(measure, rounds, runs))


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    measure_and_print(partial(measure, args.rounds, args.runs))


if __name__ == "__main__":
    main()
