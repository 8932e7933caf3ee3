"""Incident 5, the database dies: every expired key becomes an error, then a long wait.

A few readers keep asking for a handful of keys whose TTL is short, so entries expire all
through the run, as on any day. The database answers for :data:`HEALTHY` seconds, then
refuses every query for :data:`FAILING` seconds, then holds every query until the run
ends (:data:`HANG` seconds: a lock, a saturated pool), and answers them then. Two stacks
take the same traffic side by side, on the same timeline, each with a database of its own:

- without fail-safe (no :class:`~layercache.Freshness`): every call of an expired key
  raises while the database fails, and waits as long as it hangs;
- with ``Freshness(stale_while_revalidate, stale_if_error, hard_timeout, error_backoff)``:
  an expired key is served at once while one refresh runs; once a fetch has failed, the
  key backs off and its callers get the stale value without a query; a query that hangs
  is cancelled after ``hard_timeout``, and its callers get the stale value too.

The check: with fail-safe no call fails, and no call waits :data:`MAX_WAIT` (a quarter of
the hang) or longer. What a caller may wait then is ``hard_timeout`` (100 ms), what a
caller left to the hang waits is the hang (2 s): the threshold sits between the two with
room on both sides, so a slow machine's scheduling delays cannot fail it, and a caller
that waited for the hung database cannot pass it.

Memory only: the incident is the origin's, and a Redis layer would hold one more copy of
the same entries, adding nothing to what is measured.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import anyio

from .._freshness import Freshness
from .._memory import MemoryLayer
from .._stack import CacheStack
from ._report import Result, duration, plural, say, steady_traffic

READERS = 8
KEYS = 5
PACE = 0.01
"""Seconds each reader pauses between two calls."""
TTL = 0.25
"""The keys' fresh TTL: each expires about ten times over the run."""
QUERY = 0.02
"""Seconds a query takes while the database is healthy."""
HEALTHY, FAILING, HANG = 0.5, 0.5, 2.0
"""The database's timeline, in seconds from the start: healthy, refusing, hung."""
RUN = HEALTHY + FAILING + HANG
MAX_WAIT = HANG / 4
"""The longest a call may take with fail-safe (see the module's docstring)."""
FAILSAFE = Freshness(
    stale_while_revalidate=TTL, stale_if_error=60.0, hard_timeout=0.1, error_backoff=0.5
)


def phase_at(elapsed: float) -> str:
    """What the database does to a query arriving ``elapsed`` seconds into the run."""
    if elapsed < HEALTHY:
        return "healthy"
    if elapsed < HEALTHY + FAILING:
        return "failing"
    return "hanging" if elapsed < RUN else "recovered"


class Database:
    """A stand-in database on the run's timeline (:func:`phase_at`), counting queries."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.queries = 0

    async def row(self, key: str) -> dict[str, object]:
        self.queries += 1
        elapsed = time.perf_counter() - self.started
        phase = phase_at(elapsed)
        if phase == "failing":
            raise ConnectionError("the database refuses connections")
        # A hung query is answered when the database recovers, at the end of the run.
        await anyio.sleep(RUN - elapsed if phase == "hanging" else QUERY)
        return {"product": key, "query": self.queries}


@dataclass(frozen=True, slots=True)
class Side:
    """One stack's run: its callers' calls, failures and longest wait, its queries."""

    calls: int
    errors: int
    longest: float
    queries: int
    stale: int
    """Calls answered with a stale entry."""

    def describe(self) -> str:
        return (
            f"{self.errors}/{self.calls} failed, longest wait {duration(self.longest)}, "
            f"{plural(self.queries, 'query', 'queries')}"
        )


@dataclass(frozen=True, slots=True)
class FailSafeFigures:
    without: Side
    with_: Side

    def result(self) -> Result:
        problems: list[str] = []
        without, with_ = self.without, self.with_
        if not without.errors:
            problems.append("without fail-safe no call failed: the failure was not reproduced")
        if without.longest < HANG / 2:
            problems.append(
                f"without fail-safe the longest call took {duration(without.longest)}: the "
                "hang was not reproduced"
            )
        if with_.errors:
            problems.append(
                f"with fail-safe {with_.errors} of {with_.calls} calls failed, expected none"
            )
        if with_.longest >= MAX_WAIT:
            problems.append(
                f"with fail-safe a call waited {duration(with_.longest)}, expected less than "
                f"{duration(MAX_WAIT)} (hard_timeout is {duration(FAILSAFE.hard_timeout or 0)})"
            )
        return Result("5 database dies", without.describe(), with_.describe(), tuple(problems))


async def database_dies() -> Result:
    say(
        f"[5/6] The database dies: {READERS} readers keep calling for {KEYS} keys (TTL "
        f"{duration(TTL)}) for {duration(RUN)}; the"
    )
    say(
        f"      database refuses queries from {duration(HEALTHY)} on and hangs from "
        f"{duration(HEALTHY + FAILING)} to the end (memory-only"
    )
    say(
        f"      stacks); fail-safe = Freshness(stale_while_revalidate="
        f"{FAILSAFE.stale_while_revalidate:g}, stale_if_error={FAILSAFE.stale_if_error:g},"
    )
    say(f"      hard_timeout={FAILSAFE.hard_timeout:g}, error_backoff={FAILSAFE.error_backoff:g})")
    sides: dict[bool, Side] = {}
    async with (
        CacheStack([MemoryLayer(ttl=TTL)]) as plain,
        CacheStack([MemoryLayer(ttl=TTL)], freshness=FAILSAFE) as failsafe,
    ):
        started = time.perf_counter()
        async with anyio.create_task_group() as both:
            for protected, cache in ((False, plain), (True, failsafe)):
                both.start_soon(_side, cache, Database(started), sides, protected)
    without, with_ = sides[False], sides[True]
    say(f"      without fail-safe: calls {without.describe()}")
    say(f"      with fail-safe:    calls {with_.describe()} ({with_.stale} stale answers)")
    return FailSafeFigures(without, with_).result()


async def _side(
    cache: CacheStack, database: Database, sides: dict[bool, Side], protected: bool
) -> None:
    """One stack's traffic: reader ``r``'s ``n``-th call asks for key ``(r + n) % KEYS``."""
    keys = [f"product:{n}" for n in range(KEYS)]

    async def read(reader: int, n: int) -> object:
        key = keys[(reader + n) % KEYS]
        return await cache.get(key, functools.partial(database.row, key))

    traffic = await steady_traffic(READERS, RUN, PACE, read)
    stale = cache.statistics().stale_hits
    sides[protected] = Side(traffic.calls, traffic.errors, traffic.longest, database.queries, stale)
