"""Incident 2, Redis down: the cache must not turn a Redis outage into a full outage.

A :class:`~layercache.testing.FaultProxy` stands between the stacks and Redis. Each stack
first caches a few hot keys through it, then the proxy kills the traffic (open
connections reset, new ones refused: Redis killed) or black-holes it (connections stay
open, nothing comes back: a network partition), and the stack serves a burst of requests:
some for the hot keys, in L1, and more for keys whose L1 entry is gone, which need Redis.

Without protection (a strict stack) every request that needs Redis raises
``LayerUnavailableError``. With ``GracefulDegradation`` and a ``CircuitBreaker`` every
request is served: L1 hits as before, the rest by the fetcher; the first request pays at
most the Redis layer's ``timeout``, the following ones skip Redis.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .._exceptions import LayerUnavailableError
from .._options import CircuitBreaker, GracefulDegradation
from .._redis._address import parse_redis_url
from ..testing import FaultProxy
from ._report import Result, duration, say
from ._stacks import clear_prefix, instance, new_prefix

HOT_KEYS = 10
"""Requests for keys in L1."""
COLD_KEYS = 20
"""Requests for keys L1 no longer has: they need Redis."""
TIMEOUT = 0.2
"""The Redis layer's request timeout: the most a black-holed Redis may cost a call."""
RETRY_AFTER = 30.0
"""Longer than the scenario: once Redis is skipped, it stays skipped here."""
THRESHOLD = 3
"""Consecutive failures that open the circuit breaker."""
HOT_VALUE = "hot"


def _kill(proxy: FaultProxy) -> None:
    proxy.refuse()
    proxy.reset_connections()


FAULTS: dict[str, tuple[str, Callable[[FaultProxy], None]]] = {
    "killed": ("connections reset, new ones refused", _kill),
    "black-holed": ("connections open, no reply ever", FaultProxy.black_hole),
}


@dataclass(frozen=True, slots=True)
class Burst:
    """One stack's requests while Redis is down."""

    l1_requests: int
    redis_requests: int
    l1_served: int
    redis_served: int
    failed: int
    """Requests that raised :class:`~layercache.LayerUnavailableError`."""
    first: float
    """Seconds the first request (one that needs Redis) took, served or failed."""
    then: float
    """Median seconds of the following requests that needed Redis."""

    @property
    def requests(self) -> int:
        return self.l1_requests + self.redis_requests

    @property
    def served(self) -> int:
        return self.l1_served + self.redis_served

    def latencies(self) -> str:
        return f"first {duration(self.first)}, then {duration(self.then)}"


@dataclass(frozen=True, slots=True)
class OutageFigures:
    fault: str
    strict: Burst
    graceful: Burst

    def result(self) -> Result:
        problems: list[str] = []
        strict, graceful = self.strict, self.graceful
        if strict.failed != strict.redis_requests:
            problems.append(
                f"strict: {strict.failed} of the {strict.redis_requests} requests that needed "
                "Redis raised LayerUnavailableError, expected all of them"
            )
        for mode, burst in (("strict", strict), ("graceful", graceful)):
            if burst.l1_served != burst.l1_requests:
                problems.append(
                    f"{mode}: {burst.l1_served}/{burst.l1_requests} L1 hits served, "
                    "expected all (an L1 hit never touches Redis)"
                )
        if graceful.served != graceful.requests or graceful.failed:
            problems.append(
                f"graceful: {graceful.served}/{graceful.requests} requests served and "
                f"{graceful.failed} failed, expected every request served"
            )
        return Result(
            f"2 Redis {self.fault}",
            f"{strict.failed}/{strict.requests} requests failed",
            f"{graceful.served}/{graceful.requests} served, {duration(graceful.first)} "
            f"then {duration(graceful.then)}",
            tuple(problems),
        )


def proxy_target(redis_url: str) -> tuple[str, int] | None:
    """Where a TCP proxy must forward to reach ``redis_url``; None for a unix socket."""
    address = parse_redis_url(redis_url)
    if address.host is None:
        return None
    return address.host, address.port


def through_proxy(redis_url: str, proxy_port: int) -> str:
    """``redis_url`` with its host and port replaced by the proxy's (login, database and
    options kept)."""
    parts = urlsplit(redis_url)
    login, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{login}{at}127.0.0.1:{proxy_port}"))


async def redis_down(redis_url: str) -> list[Result]:
    say(
        f"[2/6] Redis down: a proxy in front of Redis fails; {HOT_KEYS + COLD_KEYS} requests "
        f"follow ({HOT_KEYS} in L1, {COLD_KEYS} need Redis)"
    )
    say(
        f"      timeout={TIMEOUT:g} s; graceful = GracefulDegradation(retry_after="
        f"{RETRY_AFTER:g}) + CircuitBreaker(threshold={THRESHOLD})"
    )
    target = proxy_target(redis_url)
    if target is None:
        reason = "the fault proxy needs a Redis on TCP, not on a unix socket"
        say(f"      skipped: {reason}")
        return [Result("2 Redis down", "not run", "not run", skipped=reason)]
    prefix = new_prefix("outage")
    results: list[Result] = []
    try:
        for fault, (how, inject) in FAULTS.items():
            say(f"      Redis {fault} ({how})")
            bursts: list[Burst] = []
            for graceful in (False, True):
                burst = await _burst(redis_url, target, prefix, inject, graceful=graceful)
                bursts.append(burst)
                if graceful:
                    outcome = f"graceful: {burst.served}/{burst.requests} served"
                else:
                    outcome = (
                        f"strict:   {burst.failed}/{burst.requests} raised "
                        f"LayerUnavailableError, {burst.l1_served} L1 hits served"
                    )
                say(f"        {outcome}; {burst.latencies()}")
            results.append(OutageFigures(fault, bursts[0], bursts[1]).result())
    finally:
        await clear_prefix(redis_url, prefix)
    return results


async def _burst(
    redis_url: str,
    target: tuple[str, int],
    prefix: str,
    inject: Callable[[FaultProxy], None],
    *,
    graceful: bool,
) -> Burst:
    """Cache the hot keys, break Redis, then send the requests one after the other."""
    with FaultProxy(*target) as proxy:
        cache = instance(
            through_proxy(redis_url, proxy.port),
            prefix,
            timeout=TIMEOUT,
            graceful_degradation=GracefulDegradation(retry_after=RETRY_AFTER) if graceful else None,
            circuit_breaker=(
                CircuitBreaker(threshold=THRESHOLD, reset_after=RETRY_AFTER) if graceful else None
            ),
        )
        async with cache:
            await cache.set_many({f"hot:{n}": HOT_VALUE for n in range(HOT_KEYS)})
            inject(proxy)
            l1_served = redis_served = failed = 0
            redis_times: list[float] = []
            for n in range(COLD_KEYS):
                started = time.perf_counter()
                try:
                    await cache.get(f"product:{n}", _fetcher(f"product:{n}"))
                except LayerUnavailableError:
                    failed += 1
                else:
                    redis_served += 1
                redis_times.append(time.perf_counter() - started)
                if n < HOT_KEYS:
                    try:
                        l1_served += await cache.get(f"hot:{n}") == HOT_VALUE
                    except LayerUnavailableError:
                        failed += 1
            proxy.pass_through()  # so that leaving the stack is not a fault scenario too
    return Burst(
        l1_requests=HOT_KEYS,
        redis_requests=COLD_KEYS,
        l1_served=l1_served,
        redis_served=redis_served,
        failed=failed,
        first=redis_times[0],
        then=statistics.median(redis_times[1:]),
    )


def _fetcher(key: str) -> Callable[[], Awaitable[dict[str, str]]]:
    async def fetch() -> dict[str, str]:
        return {"product": key, "from": "the origin"}

    return fetch
