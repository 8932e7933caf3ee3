"""The write path: ``set``, ``set_many`` and a load's result, all one procedure.

1. Encode everything first, for every layer (:meth:`WritePath.encode`): a value one
   layer cannot serialize fails the call before any layer is changed. A local layer in
   front of a serializing one gets what that one gives back (its ``decode`` of its own
   encoding, once per write), so every layer answers with an equal value of one type;
   a load returns that value too (:meth:`WritePath.encode_fetched`).
2. Fence the loads in flight for the keys, write the layers that need I/O, fence again,
   then write the local ones with no await in between: a reader that copied the old
   entry up meanwhile is overwritten, and a load that read the old state can never
   write it back afterwards (see the read path's rule).
3. Announce the keys on the bus: with the change where a carrier layer takes it
   (see :mod:`._announce`), else on the bus's own connection, within the call's one
   deadline.

A remote write that fails after it may have reached Redis has an unknown outcome: the
keys are then dropped from the local layers (instead of written) and the drop is
announced surely, so no instance goes on serving the old value.

A load's result (:meth:`WritePath.store`) is encoded the same way and written remote
then local, with neither fences nor an announcement (it changes nothing that another
stack holds): it is written only while its flight is not stale, and under the
distributed coordinator's lock the lock's layer writes only if the lock is still ours,
and then so do the others.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence

from ._announce import Announcer
from ._bus import split_keys
from ._exceptions import LayerUnavailableError
from ._freshness import Freshness
from ._health import FAILED
from ._invalidation import DropKeys, InvalidationPath
from ._layer import Layer
from ._parts import Parts
from ._record import Record
from ._redis_layer import Announcement
from ._single_flight import TTL, Flight

logger = logging.getLogger("layercache.stack")

Writes = dict[Layer, dict[str, Record]]
"""Each layer's records to write, values encoded by that layer."""


class Outcome(enum.Enum):
    """How the remote part of a write went."""

    STORED = "stored"
    UNKNOWN = "unknown"
    """A remote write failed (graceful mode) after it may have reached Redis."""
    LOCK_LOST = "lock lost"
    """The single-flight lock was no longer ours: nothing was written."""


STORED, UNKNOWN, LOCK_LOST = Outcome.STORED, Outcome.UNKNOWN, Outcome.LOCK_LOST


class WritePath:
    def __init__(self, parts: Parts, announcer: Announcer, invalidations: InvalidationPath) -> None:
        self._parts = parts
        self._announcer = announcer
        self._invalidations = invalidations
        layers = parts.layers
        self._slowest_first = tuple(
            (layer, not layer.local and (index == 0 or layers[index - 1].local))
            for index, layer in reversed(list(enumerate(layers)))
        )
        """Each layer, slowest first, and whether a write decodes its encoding of a value:
        a remote layer first or just behind local layers, whose round trip is what those
        local layers store and what a ``get`` answered by it returns (so an encoding
        that does not read back fails the write before anything is written)."""

    def encode(self, key: str, value: object, ttl: TTL, tags: frozenset[str]) -> Writes:
        """Every layer's record of ``value`` for ``key`` (checked), encoded now, aged by
        the stack's freshness.

        :raises SerializationError: a layer cannot encode it, or its encoding does not
            read back; nothing is written.
        """
        writes: Writes = {layer: {} for layer in self._parts.layers}
        freshness = self._parts.freshness
        self._encode_into(writes, key, value, self._parts.clock(), ttl, tags, freshness, False)
        return writes

    def encode_fetched(
        self, key: str, value: object, ttl: TTL, tags: frozenset[str], freshness: Freshness
    ) -> tuple[Writes, object]:
        """:meth:`encode` with ``freshness``, and ``value`` as a ``get`` gives it back:
        what the local layers in front store, or the first remote layer's round trip. A
        load returns that, so its callers get what later ``get``s get.

        :raises SerializationError: as :meth:`encode`.
        """
        writes: Writes = {layer: {} for layer in self._parts.layers}
        now = self._parts.clock()
        given_back = self._encode_into(writes, key, value, now, ttl, tags, freshness, True)
        return writes, given_back

    def encode_many(self, values: Mapping[str, object], ttl: TTL, tags: frozenset[str]) -> Writes:
        """:meth:`encode` for several keys at once (all encoded before any is written)."""
        now = self._parts.clock()
        freshness = self._parts.freshness
        writes: Writes = {layer: {} for layer in self._parts.layers}
        for key, value in values.items():
            self._encode_into(writes, key, value, now, ttl, tags, freshness, False)
        return writes

    def _encode_into(
        self,
        writes: Writes,
        key: str,
        value: object,
        now: float,
        ttl: TTL,
        tags: frozenset[str],
        freshness: Freshness,
        fetched: bool,
    ) -> object:
        # Slowest first: a local layer stores what the nearest slower layer gives back.
        given_back = value
        draw = self._parts.random() if freshness.jitter else 0.0  # one draw per write
        for layer, decodes in self._slowest_first:
            layer_ttl = ttl.get(layer.name) if isinstance(ttl, Mapping) else ttl
            stored = given_back if layer.local else value
            record = layer.record(stored, now, layer_ttl, tags, freshness, draw, fetched)
            writes[layer][key] = record
            if decodes:
                given_back = layer.decode(record.value)
        return given_back

    async def write(self, keys: Sequence[str], writes: Writes) -> None:
        """Store ``writes`` (checked, encoded), then tell the other stacks about ``keys``.

        A remote write that failed after it may have reached Redis leaves the outcome
        unknown: the keys are dropped from the local layers instead of written, and the
        drop is announced surely (see :meth:`Announcer.send`); strict mode then raises.
        """
        single_flight = self._parts.single_flight
        deadline = self._announcer.deadline()
        messages = split_keys(self._parts.origin, keys)
        announce = self._announcer.announcement(messages)
        single_flight.fence_keys(keys)
        drop = DropKeys(keys)  # what an unknown outcome means for memory
        remote = self._write_remote(writes, announce=announce)
        outcome = await self._invalidations.remote_part(drop, messages, deadline, remote)
        if outcome is UNKNOWN:
            await self._invalidations.settle_unknown(drop, messages, deadline)
            return
        single_flight.fence_keys(keys)
        self._write_local(writes)
        await self._announcer.send(messages, deadline, announce)

    async def store(
        self, flight: Flight, writes: Writes, token: str | None, *, announce: bool = False
    ) -> bool:
        """Store a load's result unless a change made its flight stale; False if it was
        not stored. Stale before the remote write: nothing is written. Stale during it:
        the remote layers got it just before the change reached them, and the change
        itself removes it there; the local layers are not written. (A remote write with
        an unknown outcome is no reason not to keep the value here: another instance
        holds no newer value because of it.)

        ``announce``: the result replaces an entry other instances may hold stale (a
        refresh): once stored, they are told to drop the key, and read this one from
        Redis next. A bus failure then is logged: the value is stored all the same."""
        if flight.stale:
            return False
        messages = split_keys(self._parts.origin, (flight.key,)) if announce else []
        announcement = self._announcer.announcement(messages)
        if await self._write_remote(writes, token, announce=announcement) is LOCK_LOST:
            return False
        if flight.stale:
            return False
        self._write_local(writes)
        try:
            await self._announcer.send(messages, self._announcer.deadline(), announcement)
        except LayerUnavailableError as error:
            logger.warning("could not announce the refresh of %r: %s", flight.key, error)
        return True

    async def _write_remote(
        self, writes: Writes, token: str | None = None, *, announce: Announcement | None = None
    ) -> Outcome:
        """Write the layers that need I/O, each through its guard: ``UNKNOWN`` if one
        failed in graceful mode. With a lock ``token``, the lock's layer first:
        ``LOCK_LOST`` if the lock was no longer ours (then no layer is written)."""
        parts = self._parts
        lock_layer = parts.lock_layer
        outcome = STORED
        if token is not None and lock_layer is not None and parts.distributed is not None:
            ((key, record),) = writes[lock_layer].items()
            guard = parts.guards[lock_layer]
            stored = await guard.call(lock_layer.write_locked, key, record, token, write=True)
            if stored is False:
                parts.distributed.lost_lock()
                return LOCK_LOST
            if stored is FAILED:
                outcome = UNKNOWN
        for layer in parts.remote:
            if token is not None and layer is lock_layer:
                continue
            guard = parts.guards[layer]
            carrier = self._announcer.carrier(layer, announce)
            if carrier is not None:
                done = await guard.call(carrier.write_many, writes[layer], announce, write=True)
            else:
                done = await guard.call(layer.write_many, writes[layer], write=True)
            if done is FAILED:
                outcome = UNKNOWN
        return outcome

    def _write_local(self, writes: Writes) -> None:
        for layer in self._parts.every_local:
            layer.write_many_nowait(writes[layer])
