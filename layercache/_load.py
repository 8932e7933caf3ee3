"""The load path: what a ``get`` does once the hot path has not answered it.

A ``get`` looks at the local layers in front; a fresh entry answers it, and an entry due
for a refresh ahead answers it too and starts one background refresh. Otherwise it joins
the key's load in flight (single-flight: one per key and kind) and waits on it; a lone
read without a fetcher of the one remote layer behind the local ones is sent by the
caller directly (the read path's direct variant). Without a fetcher only fresh entries
answer. A load with a fetcher runs :meth:`LoadPath.load` in the single-flight actor's
task group, never in a caller's task:

1. **Read-through**: the layers again, slowest included (a set() may have filled a local
   layer meanwhile, another instance may have refreshed Redis). A fresh entry not due
   for a refresh answers; the others found are the load's *candidates*, and the best one
   is judged by the call's :class:`~layercache.Freshness` (:func:`._freshness.judge`).
2. **Decide**: an early or revalidatable candidate answers the callers at once, and the
   load goes on as a background refresh (bounded: :data:`._freshness.MAX_REFRESHES` at
   once, each within ``hard_timeout`` or :data:`._freshness.REFRESH_TIME_LIMIT`). While
   the key backs off after a failure, any candidate within the windows answers, and
   nothing is fetched.
3. **Fetch**: await the fetcher once, within ``hard_timeout``; with a candidate within
   ``stale_if_error`` it is the fallback for a failure or a timeout (and, after
   ``soft_timeout``, the callers' answer while the fetch goes on). With the distributed
   coordinator, only under its Redis lock, or after waiting for the process that holds
   it (:meth:`~layercache.RedisSingleFlightCoordinator.load_once`).
4. **Store**: the write path's ``store``, unless a change made the flight stale (its
   callers still get the value, as the layers give it back). A fallback is never stored.

The flight stays registered until the load ends, refresh included: later callers join it
(and get its early answer at once), so a key has at most one refresh.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from ._exceptions import FetchTimeoutError
from ._freshness import MAX_REFRESHES, REFRESH_TIME_LIMIT, Freshness, Worth, best, judge
from ._parts import Parts
from ._read import ReadPath
from ._record import Record, Serving
from ._single_flight import MISSING, TTL, Fetcher, Flight, Outcome
from ._write import WritePath

logger = logging.getLogger("layercache.stack")

Candidate = tuple[Record, str]
"""A record a load found but did not take as fresh, and its layer's name."""


class LoadPath:
    def __init__(self, parts: Parts, reads: ReadPath, writes: WritePath) -> None:
        self._parts = parts
        self._reads = reads
        self._writes = writes
        self._single_flight = parts.single_flight
        self._tally = parts.tally

    async def get(
        self,
        key: str,
        fetcher: Fetcher | None,
        ttl: TTL,
        tags: frozenset[str],
        default: Any,
        freshness: Freshness,
    ) -> Any:
        """``get`` after its checks: the local layers, then the key's load in flight."""
        tally = self._tally
        local = self._reads.read_local(key)
        if local is not None:
            value = self._from_local(local, key, fetcher, ttl, tags, freshness)
            if value is not MISSING:
                return value
        if fetcher is None and not self._parts.remote:
            tally.misses += 1
            return default
        single_flight = self._single_flight
        flight, new = single_flight.join(key, fetcher, ttl, tags, freshness)
        read_it = new and single_flight.launch(flight) and await self._reads.read_directly(flight)
        try:
            if not new and flight.final is not None:
                value, source, stale = await self._join_answered(flight, freshness)
            else:
                value, source = await self._answer_of(flight, new and not read_it)
                stale = flight.served_stale
        except Exception:
            tally.misses += 1  # no layer answered; the fetcher (or a layer) failed
            raise
        if source is None:
            tally.misses += 1
        else:
            tally.layer_hits[source] += 1
            tally.stale_hits += stale
        return default if value is MISSING else value

    def _from_local(
        self,
        local: Candidate,
        key: str,
        fetcher: Fetcher | None,
        ttl: TTL,
        tags: frozenset[str],
        freshness: Freshness,
    ) -> object:
        """The answer of the entry a local layer in front has, if it answers (counted);
        ``MISSING``: the key's load decides."""
        record, name = local
        now = self._parts.clock()
        worth = judge(record, now, freshness)
        if worth is Worth.FRESH or worth is Worth.EARLY:
            self._tally.layer_hits[name] += 1
            if worth is Worth.EARLY and fetcher is not None:
                self._refresh_ahead(key, fetcher, ttl, tags, freshness)
            return record.value
        if fetcher is None or worth is Worth.NONE or not self._parts.backoff.active(key, now):
            return MISSING
        # The origin rests after a failure: what memory has answers, without a load
        # (nobody refreshes the key meanwhile, nor looks for a newer copy in Redis).
        self._tally.layer_hits[name] += 1
        self._tally.stale_hits += 1
        return record.value

    async def _answer_of(self, flight: Flight, yields: bool) -> Outcome:
        if not flight.reply.done:
            return await self._single_flight.wait(flight)
        if yields:
            # Answered with no I/O (a layer down or skipped): still let other tasks
            # run, or a caller retrying in a loop would starve them, the transport's
            # reconnect included (asyncio's set event does not yield). (A load joined
            # after it answered is like a hit: no yield.)
            await anyio.lowlevel.checkpoint()
        return flight.reply.result()

    async def _join_answered(
        self, flight: Flight, freshness: Freshness
    ) -> tuple[object, str | None, bool]:
        """Join a load that answered early and goes on: its answer, if the entry it
        answered with is good enough for this call's ``freshness``; else its own result
        (with that entry as the fallback of a failure, where the windows allow)."""
        found = flight.found
        assert found is not None
        worth = judge(found[0], self._parts.clock(), freshness)
        if worth in (Worth.FRESH, Worth.EARLY, Worth.REVALIDATE):
            value, source = flight.reply.result()
            return value, source, worth is Worth.REVALIDATE
        try:
            value, source = await self._single_flight.wait(flight, final=True)
        except Exception:
            if worth is not Worth.FALLBACK:
                raise
            self._tally.stale_on_error += 1
            return found[0].value, found[1], True
        return value, source, False

    def _refresh_ahead(
        self, key: str, fetcher: Fetcher, ttl: TTL, tags: frozenset[str], freshness: Freshness
    ) -> None:
        """Start the key's load, unless one runs: it finds the early entry and refreshes."""
        single_flight = self._single_flight
        flight, new = single_flight.join(key, fetcher, ttl, tags, freshness)
        if new:
            single_flight.launch(flight)

    async def load(self, flight: Flight) -> Outcome:
        """A load with a fetcher (one task per load, in the single-flight's group)."""
        telemetry = self._parts.telemetry
        if telemetry is None:
            return await self._read_or_fetch(flight)
        with telemetry.load_span(flight.key) as report_source:
            outcome = await self._read_or_fetch(flight)
            report_source(outcome[1])
            return outcome

    async def _read_or_fetch(self, flight: Flight) -> Outcome:
        # A found entry's tags are known only once it is found, after fences for them
        # may have passed: the read path copies it up only if no fence at all happened.
        since = self._single_flight.fence_count
        freshness = flight.freshness
        candidates: list[Candidate] = []
        fresh = self._fresh(flight)
        found = await self._reads.read_through(flight.key, since, 0, fresh, candidates)
        if found is not None:
            return found
        candidate = best(candidates)
        flight.watch(candidate[0].tags if candidate is not None else frozenset())
        if flight.stale:
            candidate = None  # a change passed while we read: what we found may be gone
        flight.found = candidate
        now = self._parts.clock()
        worth = Worth.NONE if candidate is None else judge(candidate[0], now, freshness)
        if candidate is not None and worth is not Worth.NONE:
            if self._parts.backoff.active(flight.key, now):
                return self._answer(flight, candidate, worth)  # the origin rests
            if worth is not Worth.FALLBACK:
                answered = self._answer(flight, candidate, worth, goes_on=True)
                refreshed = await self._refresh(flight, since)
                return answered if refreshed is None else refreshed
        fallback = candidate if worth is Worth.FALLBACK else None
        limit = freshness.hard_timeout
        if limit is None and fallback is not None and freshness.soft_timeout is not None:
            limit = REFRESH_TIME_LIMIT  # it may go on in the background: bounded there too
        outcome = await self._fetch_guarded(flight, since, fallback, limit)
        assert outcome is not None
        return outcome

    @staticmethod
    def _fresh(flight: Flight) -> Callable[[Record, float], bool]:
        """What a load takes as found: fresh, and not due for a refresh ahead."""
        freshness = flight.freshness

        def fresh(record: Record, now: float) -> bool:
            return judge(record, now, freshness) is Worth.FRESH

        return fresh

    def _answer(
        self, flight: Flight, candidate: Candidate, worth: Worth, *, goes_on: bool = False
    ) -> Outcome:
        """Answer the flight's callers with ``candidate`` now; ``goes_on``: the load
        goes on, and callers who join it get this answer if it is good enough for them
        (see :meth:`_join_answered`)."""
        record, name = candidate
        outcome: Outcome = (record.value, name)
        if flight.reply.done:
            return outcome
        flight.served_stale = worth is not Worth.EARLY
        if goes_on:
            flight.answer_early(outcome, self._single_flight.event())
        else:
            flight.reply.set(outcome)
        return outcome

    async def _refresh(self, flight: Flight, since: int) -> Outcome | None:
        """The background part of a load that has answered: fetch and store, bounded in
        number and time. Its result (for callers who joined late), or None: skipped, or
        left to another process. A failure is counted and raised (for those callers)."""
        single_flight, tally = self._single_flight, self._tally
        if single_flight.background >= MAX_REFRESHES:
            tally.refreshes_skipped += 1
            return None
        if flight.stale:
            return None  # fenced already: what it fetched would not be stored
        tally.refreshes += 1
        single_flight.background += 1
        granted = self._serve(flight)
        try:
            limit = flight.freshness.hard_timeout or REFRESH_TIME_LIMIT
            return await self._fetch_guarded(flight, since, None, limit, background=True)
        except Exception:
            tally.refresh_errors += 1
            raise
        finally:
            single_flight.background -= 1
            if granted is not None:
                single_flight.unserve(flight.key, granted)

    def _serve(self, flight: Flight) -> Serving | None:
        """While the refresh runs, let the hot path answer with the entry the load
        answered with, if that is the first memory layer's, for as long as the load's
        freshness allows (other calls take the slow path and judge for themselves)."""
        found, local = flight.found, self._parts.local
        if found is None or not local or found[1] != local[0].name:
            return None
        record = found[0]
        if record.fresh_until is None:
            return None
        if record.is_fresh(self._parts.clock()):
            return self._single_flight.serve(flight.key, record.fresh_until, stale=False)
        until = record.fresh_until + flight.freshness.stale_while_revalidate
        if record.stale_until is not None:
            until = min(until, record.stale_until)
        return self._single_flight.serve(flight.key, until, stale=True)

    async def _fetch_guarded(
        self,
        flight: Flight,
        since: int,
        fallback: Candidate | None,
        limit: float | None,
        *,
        background: bool = False,
    ) -> Outcome | None:
        """:meth:`_fetch_bounded`, and with a ``fallback`` and ``soft_timeout``, a timer
        that answers with it if the fetch has not returned by then."""
        soft = flight.freshness.soft_timeout
        if fallback is None or soft is None or flight.reply.done:
            return await self._fetch_bounded(flight, since, fallback, limit, background, None)
        async with anyio.create_task_group() as timer:
            timer.start_soon(self._answer_after, soft, flight, fallback)
            try:
                outcome = await self._fetch_bounded(
                    flight, since, fallback, limit, background, timer.cancel_scope.cancel
                )
            finally:
                timer.cancel_scope.cancel()
        return outcome

    async def _answer_after(self, delay: float, flight: Flight, fallback: Candidate) -> None:
        await anyio.sleep(delay)
        self._answer(flight, fallback, Worth.FALLBACK, goes_on=True)

    async def _fetch_bounded(
        self,
        flight: Flight,
        since: int,
        fallback: Candidate | None,
        limit: float | None,
        background: bool,
        fetched: Callable[[], None] | None,
    ) -> Outcome | None:
        """Fetch and store within ``limit`` seconds, waiting for the coordinator's lock
        included; a failure or the limit goes to :meth:`_failed`."""
        outcome: Outcome | None = None
        failure: Exception | None = None
        with anyio.move_on_after(math.inf if limit is None else limit) as deadline:
            try:
                outcome = await self._locked_fetch(flight, since, background, fetched)
            except Exception as error:
                failure = error
        if deadline.cancelled_caught:
            self._tally.fetch_timeouts += 1
            failure = FetchTimeoutError(
                f"the fetch of {flight.key!r} took longer than {limit} s and was cancelled"
            )
        if failure is not None:
            return self._failed(flight, fallback, failure)
        return outcome

    async def _locked_fetch(
        self, flight: Flight, since: int, background: bool, fetched: Callable[[], None] | None
    ) -> Outcome | None:
        """Fetch, under the distributed coordinator's lock where there is one: waiting
        for the process that holds it, or (``background``) leaving the refresh to it
        (None)."""
        distributed = self._parts.distributed
        if distributed is None:
            return await self._fetch(flight, None, fetched)
        remote = len(self._parts.local)

        async def read() -> Outcome | None:
            # Fresh and not due: an entry due for the refresh this is still needs it.
            return await self._reads.read_through(flight.key, since, remote, self._fresh(flight))

        async def fetch(token: str | None) -> Outcome:
            return await self._fetch(flight, token, fetched)

        guard = self._parts.guards[distributed]
        if background:
            return await distributed.refresh_once(flight.key, flight.tags, guard, read, fetch)
        return await distributed.load_once(flight.key, flight.tags, guard, read, fetch)

    async def _fetch(
        self, flight: Flight, token: str | None, fetched: Callable[[], None] | None
    ) -> Outcome:
        """Run the fetcher and store its result (with a lock ``token``: only while the
        lock holds); ``fetched`` is told when the fetcher has returned."""
        if flight.fetcher is None:
            raise RuntimeError("a reading flight does not fetch")
        tally = self._tally
        tally.fetches += 1
        try:
            value = await _call_fetcher(flight.fetcher)
        except Exception:
            tally.fetch_errors += 1
            raise
        if fetched is not None:
            fetched()  # no soft_timeout answer now: the value is here
        self._parts.backoff.succeeded(flight.key)
        writes, stored = self._writes.encode_fetched(
            flight.key, value, flight.ttl, flight.tags, flight.freshness
        )
        # It replaces an entry found stale or early, which other instances may hold
        # too: tell them to drop theirs (they find this one in Redis).
        if not await self._writes.store(flight, writes, token, announce=flight.found is not None):
            tally.stale_loads += 1
        return stored, None

    def _failed(self, flight: Flight, fallback: Candidate | None, error: Exception) -> Outcome:
        """A fetch (or its store, or the wait for its lock) failed: the key backs off,
        the error is logged once per key per backoff where callers are kept from it,
        and the fallback answers if there is one and nobody was answered yet; else the
        error is raised (to the callers, or to those who joined an early answer)."""
        key, freshness = flight.key, flight.freshness
        first = self._parts.backoff.failed(key, self._parts.clock(), freshness.error_backoff)
        kept = fallback is not None or flight.reply.done
        if first and kept:
            logger.warning(
                "fetching %r failed (%r): callers get the entry it has, and it is not "
                "fetched again for %s s",
                key,
                error,
                freshness.error_backoff,
            )
        if fallback is None or flight.reply.done:
            raise error
        self._tally.stale_on_error += 1
        return self._answer(flight, fallback, Worth.FALLBACK)


async def _call_fetcher(fetcher: Fetcher) -> object:
    result = fetcher()
    if not inspect.isawaitable(result):
        raise TypeError(
            f"fetcher must return an awaitable (define it with `async def`); "
            f"{fetcher!r} returned {type(result).__name__}"
        )
    return await result
