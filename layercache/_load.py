"""The load path: what a ``get`` does once the local layers in front have missed.

A ``get`` joins the key's load in flight (single-flight: one per key and kind) and waits
on it; a lone read of the one remote layer behind the local ones is sent by the caller
directly (the read path's direct variant). A load with a fetcher runs
:meth:`LoadPath.load` in the single-flight actor's task group, never in a caller's task:

1. **Read-through**: the layers again, slowest included (the read path's walk; a set()
   may have filled a local layer meanwhile).
2. **Fetch**: await the fetcher once. With the distributed coordinator, only under its
   Redis lock, or after waiting for the process that holds it
   (:meth:`~layercache.RedisSingleFlightCoordinator.load_once`).
3. **Store**: the write path's ``store``, unless a change made the flight stale (its
   callers still get the value, as the layers give it back: the same for the first
   ``get`` as for the ones that hit it later).
"""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import anyio.lowlevel

from ._parts import Parts
from ._read import ReadPath
from ._single_flight import MISSING, Fetcher, Flight, Outcome
from ._write import WritePath


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
        ttl: float | None,
        tags: frozenset[str],
        default: Any,
    ) -> Any:
        """``get`` after its checks: the local layers, then the key's load in flight."""
        value = self._reads.read_local(key)
        if value is not MISSING:
            return value
        tally = self._tally
        if fetcher is None and not self._parts.remote:
            tally.misses += 1
            return default
        single_flight = self._single_flight
        flight, new = single_flight.join(key, fetcher, ttl, tags)
        read_it = new and single_flight.launch(flight) and await self._reads.read_directly(flight)
        try:
            if flight.reply.done:
                if not read_it:
                    # Answered with no I/O (a layer down or skipped): still let other
                    # tasks run, or a caller retrying in a loop would starve them, the
                    # transport's reconnect included (asyncio's set event does not yield).
                    await anyio.lowlevel.checkpoint()
                value, source = flight.reply.result()
            else:
                value, source = await self._single_flight.wait(flight)
        except Exception:
            tally.misses += 1  # no layer answered; the fetcher (or a layer) failed
            raise
        if source is None:
            tally.misses += 1
        else:
            tally.layer_hits[source] += 1
        return default if value is MISSING else value

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
        found = await self._reads.read_through(flight.key, since)
        if found is not None:
            return found
        distributed = self._parts.distributed
        if distributed is None:
            return await self._fetch(flight, None)
        remote = len(self._parts.local)

        async def read() -> Outcome | None:
            return await self._reads.read_through(flight.key, since, remote)

        async def fetch(token: str | None) -> Outcome:
            return await self._fetch(flight, token)

        guard = self._parts.guards[distributed]
        return await distributed.load_once(flight.key, flight.tags, guard, read, fetch)

    async def _fetch(self, flight: Flight, token: str | None) -> Outcome:
        """Run the fetcher and store its result (with a lock ``token``: only while the
        lock holds)."""
        if flight.fetcher is None:
            raise RuntimeError("a reading flight does not fetch")
        tally = self._tally
        tally.fetches += 1
        try:
            value = await _call_fetcher(flight.fetcher)
        except Exception:
            tally.fetch_errors += 1
            raise
        writes, stored = self._writes.encode_fetched(flight.key, value, flight.ttl, flight.tags)
        if not await self._writes.store(flight, writes, token):
            tally.stale_loads += 1
        return stored, None


async def _call_fetcher(fetcher: Fetcher) -> object:
    result = fetcher()
    if not inspect.isawaitable(result):
        raise TypeError(
            f"fetcher must return an awaitable (define it with `async def`); "
            f"{fetcher!r} returned {type(result).__name__}"
        )
    return await result
