"""The TTL trade-off: a short TTL keeps data fresh, and makes its readers wait.

One hot key, :data:`READERS` readers asking for it all the time, a TTL of :data:`TTL` and
an origin that takes :data:`ORIGIN_LATENCY` per query: the key expires again and again
during the run. Three stacks take the same traffic one after the other (latencies are
measured, so never two at once):

- without freshness: single-flight keeps it to one query per expiry, but every reader
  that asks while the query runs waits for it, and the p99 is about the origin's latency;
- ``Freshness(stale_while_revalidate=...)``: the expired value is served at once while
  one background refresh runs;
- ``Freshness(refresh_ahead=0.5)``: a hit past half the TTL starts that refresh, so the
  key never expires under its readers (at the price of a query every half TTL).

The check: with either, the p99 stays under :data:`MAX_P99`, a fifth of the origin
latency (a caller that waited for the origin waited most of it, a stale or early answer
takes microseconds: the threshold leaves a slow machine room), and origin calls stay at
one per entry life, at most :data:`RUN` over the life (the TTL, or the refresh-ahead
point); a stampede would be a query per reader.

Memory only: Redis would add a round trip to the calls that miss, and nothing else to
what is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._freshness import Freshness
from .._memory import MemoryLayer
from .._stack import CacheStack
from ._report import Result, duration, plural, say, steady_traffic
from ._stampede import Origin

KEY = "products:listing"
READERS = 100
PACE = 0.02
"""Seconds each reader pauses between two calls."""
TTL = 0.2
ORIGIN_LATENCY = 0.1
RUN = 0.6
"""Seconds of traffic per stack: the key expires twice (or is refreshed three times)."""
MAX_P99 = ORIGIN_LATENCY / 5
AHEAD = 0.5
SETUPS: dict[str, Freshness | None] = {
    "without freshness": None,
    "stale-while-revalidate": Freshness(stale_while_revalidate=60.0),
    f"refresh-ahead ({AHEAD:g})": Freshness(refresh_ahead=AHEAD),
}


@dataclass(frozen=True, slots=True)
class Readers:
    """What one stack's readers saw: call latencies, and what it cost the origin."""

    p50: float
    p99: float
    queries: int
    lives: int
    """Entry lives the run spans (its length over a life, rounded up): the most queries
    one per expiry (or per refresh-ahead point) allows."""
    stale: int
    """Calls answered with a stale entry."""
    errors: int = 0

    def describe(self) -> str:
        queries = plural(self.queries, "origin query", "origin queries")
        return f"p50 {duration(self.p50)}, p99 {duration(self.p99)}, {queries}"


@dataclass(frozen=True, slots=True)
class ExpiryFigures:
    without: Readers
    revalidated: Readers
    ahead: Readers

    def result(self) -> Result:
        problems: list[str] = []
        without, revalidated, ahead = self.without, self.revalidated, self.ahead
        if without.p99 < ORIGIN_LATENCY / 2:
            problems.append(
                f"without freshness the p99 was {duration(without.p99)}: the wait for the "
                "origin was not reproduced"
            )
        for setup, readers in (("stale-while-revalidate", revalidated), ("refresh-ahead", ahead)):
            if readers.p99 >= MAX_P99:
                problems.append(
                    f"with {setup} the p99 was {duration(readers.p99)}, expected under "
                    f"{duration(MAX_P99)}: callers waited for the origin"
                )
            if readers.queries > readers.lives:
                problems.append(
                    f"with {setup} the origin was queried {readers.queries} times in "
                    f"{readers.lives} entry lives, expected at most one per life"
                )
        errors = without.errors + revalidated.errors + ahead.errors
        if errors:
            problems.append(f"{plural(errors, 'call')} failed, expected none")
        return Result(
            "6 TTL trade-off",
            f"p99 {duration(without.p99)}, {without.queries} origin queries",
            f"p99 {duration(revalidated.p99)} SWR, {duration(ahead.p99)} ahead; "
            f"{revalidated.queries} and {ahead.queries} queries",
            tuple(problems),
        )


async def ttl_tradeoff() -> Result:
    say(
        f"[6/6] The TTL trade-off: {READERS} readers on one hot key (TTL {duration(TTL)}) for "
        f"{duration(RUN)}, across its expiries;"
    )
    say(f"      the origin takes {duration(ORIGIN_LATENCY)} a query (memory-only stacks)")
    measured: list[Readers] = []
    for setup, freshness in SETUPS.items():
        readers = await _readers(freshness)
        stale = f" ({readers.stale} stale answers)" if readers.stale else ""
        say(f"      {setup + ':':24} {readers.describe()}{stale}")
        measured.append(readers)
    return ExpiryFigures(*measured).result()


async def _readers(freshness: Freshness | None) -> Readers:
    """The key fetched once, then :data:`RUN` seconds of readers."""
    origin = Origin(ORIGIN_LATENCY)
    async with CacheStack([MemoryLayer(ttl=TTL)], freshness=freshness) as cache:
        await cache.get(KEY, origin.listing)
        before = origin.queries

        async def read(reader: int, n: int) -> object:
            return await cache.get(KEY, origin.listing)

        traffic = await steady_traffic(READERS, RUN, PACE, read)
        stale = cache.statistics().stale_hits
    ahead = None if freshness is None else freshness.refresh_ahead
    life = TTL * (ahead or 1.0)  # an entry's life: until it expires, or is refreshed ahead
    return Readers(
        p50=traffic.percentile(50),
        p99=traffic.percentile(99),
        queries=origin.queries - before,
        lives=math.ceil(RUN / life),
        stale=stale,
        errors=traffic.errors,
    )
