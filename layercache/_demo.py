"""The stampede demo: N concurrent callers ask for one expired key, on two instances.

Without a cache each caller queries the origin. With layercache, instance A (memory +
Redis) queries it once and every caller gets the same object; instance B, a second
stack sharing the Redis layer, serves its own crowd from Redis without any query. Uses
an embedded Redis-protocol server unless a real one is given. Exits non-zero if any of
that does not happen.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import anyio

from ._memory import MemoryLayer
from ._redis_layer import RedisLayer
from ._stack import CacheStack


@dataclass
class Origin:
    """A stand-in for a database: counts queries and takes ``latency`` per query."""

    latency: float
    queries: int = 0
    in_flight: int = 0
    peak: int = 0

    async def listing(self) -> dict[str, object]:
        self.queries += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.latency)
            return {"products": [f"product:{n}" for n in range(20)], "query": self.queries}
        finally:
            self.in_flight -= 1


@dataclass
class Outcome:
    label: str
    queries: int
    peak_concurrent_queries: int
    seconds: float
    distinct_results: int
    expected_queries: int


async def _crowd(callers: int, call: Callable[[], object]) -> tuple[float, int]:
    """Run ``callers`` concurrent calls; return the wall time and distinct results."""
    results: list[object] = []

    async def caller() -> None:
        results.append(await call())  # type: ignore[misc]

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    return time.perf_counter() - started, len({id(result) for result in results})


async def _demo(callers: int, latency: float, redis_url: str) -> list[Outcome]:
    outcomes = []
    origin = Origin(latency)
    seconds, distinct = await _crowd(callers, origin.listing)
    outcomes.append(Outcome("no cache", origin.queries, origin.peak, seconds, distinct, callers))

    prefix = f"layercache-demo:{uuid.uuid4().hex[:8]}:"
    origin = Origin(latency)
    for instance in ("A", "B"):
        layers = [MemoryLayer(ttl=60), RedisLayer(url=redis_url, prefix=prefix, ttl=300)]
        async with CacheStack(layers) as cache:
            before = origin.queries
            seconds, distinct = await _crowd(
                callers, lambda: cache.get("products:listing", origin.listing)
            )
            label = f"instance {instance}"
            queries = origin.queries - before
            expected = 1 if instance == "A" else 0
            outcomes.append(Outcome(label, queries, origin.peak, seconds, distinct, expected))
            if instance == "B":
                await cache.clear()
    return outcomes


def run_demo(backend: str, callers: int, latency: float, redis_url: str | None = None) -> int:
    server: AbstractContextManager[object]
    if redis_url is None:
        try:
            from .testing import EmbeddedRedis

            embedded = EmbeddedRedis()
            server = embedded
        except ImportError as error:  # pragma: no cover - depends on the install
            print(f"the embedded Redis needs `pip install layercache[embedded]` ({error})")
            print("or pass --redis-url redis://host:port/db")
            return 2
    else:
        server = nullcontext()
    with server:
        url = redis_url if redis_url is not None else embedded.url
        where = "embedded Redis" if redis_url is None else "Redis at --redis-url"
        print(f"layercache demo on {backend}, {where}: {callers} concurrent callers ask for one")
        print("expired key, first on instance A, then on instance B (a second stack sharing")
        print(f"the Redis layer). The origin takes {latency * 1000:.0f} ms per query.\n")
        outcomes = anyio.run(_demo, callers, latency, url, backend=backend)
    header = ("", "origin queries", "peak concurrent", "wall time", "distinct objects")
    print(f"{header[0]:12} {header[1]:>15} {header[2]:>16} {header[3]:>10} {header[4]:>17}")
    for o in outcomes:
        print(
            f"{o.label:12} {o.queries:>15} {o.peak_concurrent_queries:>16} "
            f"{o.seconds * 1000:>8.1f}ms {o.distinct_results:>17}"
        )
    broken = [o for o in outcomes[1:] if o.queries != o.expected_queries or o.distinct_results != 1]
    print()
    if not broken:
        print(
            f"OK: {2 * callers} callers on two instances, 1 origin query; every caller on an "
            "instance got the same object."
        )
        return 0
    for o in broken:
        print(
            f"FAILED: {o.label} made {o.queries} origin queries (expected "
            f"{o.expected_queries}) and handed out {o.distinct_results} distinct objects."
        )
    return 1
