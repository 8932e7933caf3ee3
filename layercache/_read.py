"""The read path: one walk over the layers, with one backfill-and-fence rule.

**The rule.** A read copies what it found into the faster layers it missed in (the
*backfill*) only if no fence that could touch the key has run since the read began.
A fence means the record found may be older than what the change left behind, and a
copy would bring the old value back into a layer the change has already passed.
Skipping a copy costs one more read later; nothing else. What "since the read began"
means is the read's :data:`Since`, taken before it sends anything: the flights it
answers, where it has them (a fence marks exactly the flights it could make stale: its
keys', or every read's for a tag or a clear), or else ``SingleFlight.fence_count``,
which any fence advances (a load, whose entry's tags are known only once it is found,
and ``get_many``).

Every read uses it: the caller's synchronous walk over the local layers in front
(:meth:`ReadPath.read_local`, no await, so no fence can come between), the walk over
the layers that need I/O (:meth:`ReadPath.read`, for ``get_many``, batched reads and a
load's read-through), and its variant for a lone read completed by the transport's
callback (:meth:`ReadPath.read_directly`, one remote layer behind the local ones).
A remote layer is read through its health guard: skipped, it reads as a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from ._exceptions import LayerUnavailableError, SerializationError
from ._health import LayerHealth, Skipped
from ._layer import Layer, LocalLayer
from ._parts import Parts
from ._record import Entry, Record
from ._redis_layer import ReadDone, RedisLayer
from ._single_flight import MISSING, Flight, Outcome

logger = logging.getLogger("layercache.stack")

L = TypeVar("L", bound=Layer)
Found = dict[str, tuple[Record, str]]
"""Key → the record found and the name of the layer it came from."""
Accept = Callable[[Record, float], bool]
"""Whether a read takes a record found (at a moment on the stack's clock)."""
Rejected = dict[str, list[tuple[Record, str]]]
"""Key → the records a read did not take, and their layers' names, fastest first."""
Since = int | Mapping[str, Flight]
"""When a read began, for the backfill rule: the fence count then, or the flights (by
key) the read answers."""


class ReadPath:
    """Reads for one stack's calls, loads and batches."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._layers = parts.layers
        self._local = parts.local
        self._single_flight = parts.single_flight
        self._tally = parts.tally

    def read_local(self, key: str) -> tuple[Record, str] | None:
        """The record (fresh or stale) from the first local layer in front that has
        ``key``, and that layer's name; None. Synchronous: the caller's own task, which
        counts the hit. A fresh one is copied into the faster local layers."""
        since = self._single_flight.fence_count
        for index, layer in enumerate(self._local):
            record = layer.get_many_nowait((key,)).get(key)
            if record is not None:
                if record.is_fresh(self._parts.clock()):
                    self._copy_up_now(index, {key: record}, since)
                return record, layer.name
        return None

    async def read(
        self,
        keys: Sequence[str],
        since: Since,
        start: int = 0,
        accept: Accept = Record.is_fresh,
        rejected: Rejected | None = None,
    ) -> Found:
        """The walk: each layer from ``start`` on is read once for the keys still
        missing; what it has that ``accept`` takes (by default: fresh) is found and
        backfilled (by the rule, against ``since``). Records it does not take are as
        missing, and go into ``rejected`` (by key, fastest layer first) if given."""
        found: Found = {}
        pending = list(keys)
        for index in range(start, len(self._layers)):
            if not pending:
                break
            layer = self._layers[index]
            # Local layers are read again: a set() may have filled them meanwhile.
            records = await self._read_layer(layer, pending)
            if not records:
                continue
            now = self._parts.clock()
            taken = {key: record for key, record in records.items() if accept(record, now)}
            if rejected is not None and len(taken) < len(records):
                for key, record in records.items():
                    if key not in taken:
                        rejected.setdefault(key, []).append((record, layer.name))
            if not taken:
                continue
            await self._copy_up(index, taken, since)
            for key, record in taken.items():
                found[key] = (record, layer.name)
            pending = [key for key in pending if key not in taken]
        return found

    async def entry(self, key: str) -> Entry | None:
        """``key``'s entry from the first layer that has it, fresh or stale (copied into
        the faster layers it missed in, by the rule), or None."""
        hit = (await self.read((key,), self._single_flight.fence_count, 0, _any)).get(key)
        return None if hit is None else Entry.of(hit[0], hit[1], self._parts.clock())

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys some layer has fresh, counted per key."""
        pending = list(dict.fromkeys(keys))
        found = await self.read(pending, self._single_flight.fence_count)
        layer_hits = self._tally.layer_hits
        for _, name in found.values():
            layer_hits[name] += 1
        self._tally.misses += len(pending) - len(found)
        return {key: record.value for key, (record, _) in found.items()}

    async def read_through(
        self,
        key: str,
        since: int,
        start: int = 0,
        accept: Accept = Record.is_fresh,
        rejected: list[tuple[Record, str]] | None = None,
    ) -> Outcome | None:
        """A load's look at the layers from ``start`` on; None if none has ``key`` as
        ``accept`` wants it (what it refused goes into ``rejected``, if given)."""
        refused: Rejected = {}
        hit = (await self.read((key,), since, start, accept, refused)).get(key)
        if rejected is not None:
            rejected.extend(refused.get(key, ()))
        return None if hit is None else (hit[0].value, hit[1])

    async def read_flights(self, flights: list[Flight]) -> list[Outcome]:
        """Reading loads (no fetcher), batched: each layer is read once for all keys."""
        by_key = {flight.key: flight for flight in flights}  # the newest of a key's
        found = await self.read(list(by_key), by_key)
        outcomes: list[Outcome] = []
        for flight in flights:
            hit = found.get(flight.key)
            outcomes.append((MISSING, None) if hit is None else (hit[0].value, hit[1]))
        return outcomes

    async def _read_layer(self, layer: Layer, keys: Sequence[str]) -> dict[str, Record]:
        if isinstance(layer, LocalLayer):
            return layer.get_many_nowait(keys)
        answer = await self._parts.guards[layer].call(layer.get_many, keys)
        return {} if isinstance(answer, Skipped) else answer

    # -- the backfill rule -------------------------------------------------------------

    def _unfenced(self, records: Mapping[str, Record], since: Since) -> Mapping[str, Record]:
        """The rule: the records no fence has overtaken since the read began."""
        if isinstance(since, int):
            return records if self._single_flight.fence_count == since else {}
        return {key: record for key, record in records.items() if not since[key].stale}

    def _copies(
        self, faster: Sequence[L], records: Mapping[str, Record], since: Since
    ) -> Iterator[tuple[L, dict[str, Record]]]:
        """Each faster layer's copies of the records the rule lets through."""
        allowed = self._unfenced(records, since)
        if not allowed:
            return
        now = self._parts.clock()
        for layer in faster:
            try:
                copies = {key: layer.backfill(record, now) for key, record in allowed.items()}
            except SerializationError as error:
                # A faster layer that cannot take it (over its max_value_size, say) is
                # left without the copies: the read still answers.
                logger.debug("not copying %r into %r: %s", list(allowed), layer.name, error)
                continue
            yield layer, copies

    async def _copy_up(self, index: int, records: Mapping[str, Record], since: Since) -> None:
        if not index:
            return
        for layer, copies in self._copies(self._layers[:index], records, since):
            if isinstance(layer, LocalLayer):
                layer.write_many_nowait(copies)
            else:
                await self._parts.guards[layer].call(layer.write_many, copies, write=True)

    def _copy_up_now(self, index: int, records: Mapping[str, Record], since: Since) -> None:
        """:meth:`_copy_up` where every faster layer is local (no await)."""
        if index:
            for layer, copies in self._copies(self._local[:index], records, since):
                layer.write_many_nowait(copies)

    # -- the direct variant ------------------------------------------------------------

    async def read_directly(self, flight: Flight) -> bool:
        """Start a reading flight on the one remote layer; its reply completes it by
        callback, in the transport's reader task, unless the caller reads the reply
        itself (True: see ``RedisLayer.read_reply``).

        The caller has just missed every local layer (with no await since), so the
        read goes straight to the remote layer, through its guard, and the callback
        does what :meth:`read` would: backfill by the rule, then the flight's answer.
        """
        layer = self._parts.direct
        if layer is None:
            raise RuntimeError("no layer to read directly from")
        guard = self._parts.guards[layer]
        single_flight = self._single_flight
        probe = guard.admit()
        if probe is None:
            refused = guard.not_sent()
            single_flight.complete(flight, _missing_if_skipped(refused))
            return False
        key = flight.key
        since = {key: flight}
        index = len(self._local)

        def finish(result: tuple[dict[str, Record], list[str]] | LayerUnavailableError) -> None:
            if isinstance(result, LayerUnavailableError):
                single_flight.complete(flight, _missing_if_skipped(guard.lost(result, probe)))
                return
            guard.succeeded(probe)
            records, corrupt = result
            if corrupt:
                # Rare: the bad bytes are deleted before anyone hears "miss", in a task.
                single_flight.start(self._clean_then_miss, layer, corrupt, flight)
                return
            record = records.get(key)
            if record is None or not record.is_fresh(self._parts.clock()):
                single_flight.complete(flight, (MISSING, None))  # without a fetcher: fresh only
                return
            self._copy_up_now(index, records, since)
            single_flight.complete(flight, (record.value, layer.name))

        def done(result: tuple[dict[str, Record], list[str]] | LayerUnavailableError) -> None:
            # Runs in the transport's reader task: it must never raise into it.
            try:
                finish(result)
            except Exception as error:
                logger.exception("completing a read of %r failed", key)
                single_flight.complete(flight, error)

        return await self._send_direct(layer, guard, flight, done, probe)

    async def _send_direct(
        self, layer: RedisLayer, guard: LayerHealth, flight: Flight, done: ReadDone, probe: bool
    ) -> bool:
        single_flight = self._single_flight
        try:
            delivered = await layer.read_now((flight.key,), done)
        except BaseException as error:
            # Not sent after all: nobody else would answer this flight's callers. A
            # cancelled caller's flight goes to the batched path (its other callers did
            # not ask to be cancelled); anything else is their error too.
            guard.abandoned(probe)
            if isinstance(error, anyio.get_cancelled_exc_class()):
                single_flight.gather(flight)
            else:
                single_flight.complete(flight, error)
            raise
        if delivered is None:
            # A round trip is under way: join the batch that goes out after it.
            guard.abandoned(probe)
            single_flight.gather(flight)
            return False
        # A lone load reads its own reply where it can; cancelled meanwhile, it leaves
        # the read to the transport's reader, which still completes the flight.
        return single_flight.loads_in_flight == 1 and await layer.read_reply(delivered)

    async def _clean_then_miss(self, layer: RedisLayer, corrupt: list[str], flight: Flight) -> None:
        try:
            await layer.delete_corrupt(corrupt)
        finally:
            self._single_flight.complete(flight, (MISSING, None))


def _any(record: Record, now: float) -> bool:
    return True


def _missing_if_skipped(outcome: Skipped | LayerUnavailableError) -> Outcome | BaseException:
    """A direct read's answer when it was not sent or failed: a miss where graceful mode
    skipped it, else the error."""
    return (MISSING, None) if isinstance(outcome, Skipped) else outcome
