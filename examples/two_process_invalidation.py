"""Two processes, two memory layers, one Redis: the invalidation bus keeps them consistent.

Run it (after ``pip install -e '.[examples]'``, from the repository root)::

    python examples/two_process_invalidation.py             # embedded Redis
    python examples/two_process_invalidation.py --redis-url redis://localhost:6379/0
    LAYERCACHE_REDIS_URL=redis://localhost:6379/0 python examples/two_process_invalidation.py
    python examples/two_process_invalidation.py --backend trio --peer-backend asyncio

Without a URL (``--redis-url`` or ``$LAYERCACHE_REDIS_URL``) it starts an embedded
Redis-protocol server in this process, which the other process connects to over TCP.

This process (A, asyncio by default) writes; it starts a second process (B, trio by
default: this same script with ``--role reader``) and drives it over B's stdin and stdout,
one command and one JSON reply per line. Each has its own stack: a memory layer with a
5-minute TTL, the shared Redis layer, and a ``RedisInvalidationBus`` signed with a secret
both get from ``$LAYERCACHE_BUS_SECRET`` (generated for B when unset). B reads articles
into its memory layer; then A updates one, invalidates a tag and deletes a key, and each
time B stops serving its memory copy and reads the new state from Redis or its database,
instead of serving the old value until its TTL runs out.

Nothing waits a fixed time: B acknowledges every command, and "until dropped" is a poll
of B's own reads, bounded by a deadline. The exit status is 0 only if B saw everything A
did.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from layercache import (
    CacheStack,
    CacheStatistics,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
)
from layercache.testing import EmbeddedRedis

SECRET_ENV = "LAYERCACHE_BUS_SECRET"
STARTUP_TIMEOUT = 30.0  # B imports its packages and connects to Redis
REPLY_TIMEOUT = 10.0  # any other command, including a wait for an invalidation
POLL_INTERVAL = 0.01
MAX_LINE = 1 << 16


def open_stack(redis_url: str, prefix: str, channel: str, secret: str) -> CacheStack:
    """The same stack in both processes: memory, then the shared Redis, and the bus."""
    return CacheStack(
        [MemoryLayer(ttl=300, max_size=10_000), RedisLayer(url=redis_url, prefix=prefix, ttl=3600)],
        invalidation_bus=RedisInvalidationBus(url=redis_url, channel=channel, secret=secret),
    )


# -- B: the reader ---------------------------------------------------------------------


class Reader:
    """B's side: reads keys through its cache and reports which layer answered."""

    def __init__(self, cache: CacheStack) -> None:
        self.cache = cache

    async def read(self, key: str) -> dict[str, Any]:
        async def from_database() -> dict[str, str]:
            return {"title": f"{key}, loaded from B's database"}

        before = self.cache.statistics()
        value = await self.cache.get(key, from_database)
        return {"key": key, "value": value, "served_by": _served_by(before, self.cache)}

    async def read_until_dropped(self, key: str) -> dict[str, Any]:
        """Read ``key`` until B's memory layer no longer answers it (the bus dropped it);
        the first read that reaches past it is the reply."""
        # A poll, bounded by a deadline: B's memory layer announces no event when the bus
        # drops an entry, and the counter invalidations_received moves when a message is
        # queued for the memory layer, a moment before it is applied.
        with anyio.fail_after(REPLY_TIMEOUT):
            while (reply := await self.read(key))["served_by"] == "memory":  # noqa: ASYNC110
                await anyio.sleep(POLL_INTERVAL)
        return reply

    async def handle(self, line: str) -> dict[str, Any]:
        command, _, key = line.strip().partition(" ")
        if command == "read":
            return await self.read(key)
        if command == "read-until-dropped":
            return await self.read_until_dropped(key)
        if command == "statistics":
            return {"statistics": statistics_json(self.cache.statistics())}
        return {"error": f"unknown command {line!r}"}


def _served_by(before: CacheStatistics, cache: CacheStack) -> str:
    after = cache.statistics()
    if after.fetches > before.fetches:
        return "database"
    for name, hits in after.layer_hits.items():
        if hits > before.layer_hits[name]:
            return name
    return "nobody"


def statistics_json(stats: CacheStatistics) -> dict[str, Any]:
    return {
        "hits": stats.hits,
        "misses": stats.misses,
        "fetches": stats.fetches,
        "layer_hits": dict(stats.layer_hits),
        "invalidations_sent": stats.invalidations_sent,
        "invalidations_received": stats.invalidations_received,
        "invalidations_rejected": stats.invalidations_rejected,
        "bus_state": stats.bus_state,
    }


async def reader_main(redis_url: str, prefix: str, channel: str) -> None:
    """B: one reply line on stdout per command line on stdin, until stdin closes."""

    def reply(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    # The stack is open (and subscribed to the bus) before B says it is ready.
    async with open_stack(redis_url, prefix, channel, os.environ[SECRET_ENV]) as cache:
        reader = Reader(cache)
        reply({"ready": True})
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            try:
                reply(await reader.handle(line))
            except TimeoutError:
                reply({"error": f"timed out: {line.strip()}"})


# -- A: the writer, which runs B -------------------------------------------------------


class Peer:
    """A's handle on B: send a command line, receive the JSON reply line."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def receive(self) -> dict[str, Any]:
        line = await self._stdout.receive_until(b"\n", MAX_LINE)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"B: {reply['error']}")
        return reply

    async def ask(self, command: str) -> dict[str, Any]:
        with anyio.fail_after(REPLY_TIMEOUT):
            await self._stdin.send(command.encode() + b"\n")
            return await self.receive()

    async def close(self) -> None:
        """Close B's stdin: B's cue to leave its ``async with`` block and exit."""
        await self._stdin.aclose()


@asynccontextmanager
async def start_reader(
    redis_url: str, prefix: str, channel: str, secret: str, backend: str
) -> AsyncIterator[Peer]:
    command = [sys.executable, __file__, "--role", "reader", "--backend", backend]
    command += ["--redis-url", redis_url, "--prefix", prefix, "--channel", channel]
    # B stops when its stdin closes: below, or when this block is left by an exception
    # (the process's aclose() closes it, then waits for B).
    async with await anyio.open_process(
        command, stderr=None, env={**os.environ, SECRET_ENV: secret}
    ) as process:
        peer = Peer(process)
        with anyio.fail_after(STARTUP_TIMEOUT):
            await peer.receive()  # {"ready": true}
        yield peer
        await peer.close()
        with anyio.fail_after(REPLY_TIMEOUT):
            returncode = await process.wait()
        if returncode != 0:
            raise RuntimeError(f"B exited with status {returncode}")


class Check:
    """What A expected of B, and what it got."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, reply: dict[str, Any], served_by: str, value: object = None) -> None:
        shown = f"B {reply['key']}: {reply['value']} (served by {reply['served_by']})"
        print(f"  {shown}")
        if reply["served_by"] != served_by or (value is not None and reply["value"] != value):
            self.failures.append(f"{shown}; expected {value or '...'} from {served_by}")


async def writer_main(redis_url: str, backend: str, peer_backend: str) -> int:
    run_id = secrets.token_hex(4)
    prefix, channel = f"two-process-example:{run_id}:", f"two-process-example:{run_id}"
    secret = os.environ.get(SECRET_ENV) or secrets.token_hex(16)
    check = Check()
    v1, v2 = {"title": "Layers"}, {"title": "Layers, revised"}
    async with open_stack(redis_url, prefix, channel, secret) as cache:
        print(f"A ({backend}): memory + Redis at {redis_url} + signed bus")
        await cache.set("article:1", v1, tags=["author:7"])
        await cache.set("article:2", {"title": "Actors"}, tags=["author:7"])
        await cache.set("article:3", {"title": "Tags"}, tags=["author:9"])
        print("A wrote article:1, article:2 (tag author:7) and article:3 (tag author:9)")

        async with start_reader(redis_url, prefix, channel, secret, peer_backend) as b:
            print(f"B ({peer_backend}) started; it reads each article twice:")
            for key in ("article:1", "article:2", "article:3"):
                check(await b.ask(f"read {key}"), "redis")
                check(await b.ask(f"read {key}"), "memory")

            await cache.set("article:1", v2, tags=["author:7"])
            print(f"A: set('article:1', {v2}); B, which held {v1} for 5 more minutes:")
            check(await b.ask("read-until-dropped article:1"), "redis", v2)
            check(await b.ask("read article:1"), "memory", v2)

            removed = await cache.invalidate_by_tag("author:7")
            print(f"A: invalidate_by_tag('author:7') removed {removed} keys; B:")
            check(await b.ask("read-until-dropped article:2"), "database")
            check(await b.ask("read article:1"), "database")
            check(await b.ask("read article:3"), "memory")

            await cache.delete("article:3")
            print("A: delete('article:3'); B:")
            check(await b.ask("read-until-dropped article:3"), "database")

            b_stats = (await b.ask("statistics"))["statistics"]
        a_stats = statistics_json(cache.statistics())
        await cache.clear()  # leave nothing behind in a real Redis
    print(f"A statistics: {a_stats}")
    print(f"B statistics: {b_stats}")
    if removed != 2:
        check.failures.append(f"invalidate_by_tag('author:7') removed {removed}, not 2")
    if b_stats["invalidations_received"] < 3 or b_stats["invalidations_rejected"]:
        check.failures.append("B did not receive A's three invalidations cleanly")
    for failure in check.failures:
        print(f"FAILED: {failure}")
    if check.failures:
        return 1
    print("OK: every change A made reached B's memory layer through the bus.")
    return 0


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The Redis to use: ``url``, else ``$LAYERCACHE_REDIS_URL``, else an embedded one."""
    url = url or os.environ.get("LAYERCACHE_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="default: $LAYERCACHE_REDIS_URL or embedded")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--peer-backend", choices=("asyncio", "trio"), default="trio")
    parser.add_argument("--role", choices=("writer", "reader"), default="writer")
    parser.add_argument("--prefix", help=argparse.SUPPRESS)  # set by A for B
    parser.add_argument("--channel", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "reader":
        anyio.run(reader_main, args.redis_url, args.prefix, args.channel, backend=args.backend)
        return 0
    with redis_server(args.redis_url) as url:
        return anyio.run(writer_main, url, args.backend, args.peer_backend, backend=args.backend)


if __name__ == "__main__":
    sys.exit(main())
