"""The interface between the stack and its layers.

A layer is an actor: ``run()`` is its task, started in the stack's task group, which
calls ``task_status.started()`` once the layer can serve. The stack talks to a layer
through the async methods below; a *local* layer (in-process memory) also offers
synchronous ``*_nowait`` twins, which the stack uses on the hot path because a local
read needs no task and no channel round trip.

Every entry crosses as a :class:`~layercache.Record` (value, deadlines, tags). Values
reach ``write_many`` already encoded by the layer's own :meth:`Layer.encode`, which the
stack calls for every layer before writing to any of them: a value one layer cannot
serialize is rejected before a single layer is changed. A local layer in front of a
serializing one is given what that layer's :meth:`Layer.decode` gives back, not the
caller's object (one decode per write, none per hit).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence

from anyio.abc import TaskStatus

from ._clock import Clock
from ._freshness import NO_FRESHNESS, Freshness
from ._record import NO_TAGS, Record, Serving
from ._statistics import LayerStatistics


def _not_attached() -> float:
    raise RuntimeError("the layer is not attached to a running CacheStack")


class Layer(ABC):
    """A cache layer: a named store run as an actor task inside a stack."""

    local: bool = False
    """True for in-process layers: read synchronously, invalidated by the bus."""

    def __init__(self, *, name: str, ttl: float | None) -> None:
        self.name = name
        self.ttl = ttl
        self.clock: Clock = _not_attached
        self._attached = False

    def record(
        self,
        value: object,
        now: float,
        ttl: float | None,
        tags: frozenset[str] = NO_TAGS,
        freshness: Freshness = NO_FRESHNESS,
        draw: float = 0.0,
        fetched: bool = False,
    ) -> Record:
        """This layer's record of a new ``value`` written at ``now`` with fresh ``ttl``
        (None: this layer's default), aged by ``freshness``: its stale window and
        refresh-ahead point, ``negative_ttl`` for a ``fetched`` None, ``jitter * draw`` (a
        random draw in [0, 1) shared by the write's layers) off the fresh TTL.

        :raises SerializationError: the layer cannot encode the value.
        """
        fresh = freshness.fresh_ttl(self.ttl if ttl is None else ttl, value, draw, fetched)
        return Record.new(
            self.encode(value),
            now,
            fresh,
            tags,
            stale=freshness.stale_window,
            refresh_ahead=freshness.refresh_ahead,
        )

    def backfill(self, found: Record, now: float) -> Record:
        """This layer's copy of ``found``, a record read from a slower layer: fresh no
        longer than there, nor than this layer's own TTL, then stale for the same
        window (so never living longer than there)."""
        until = None if self.ttl is None else now + self.ttl
        return found.capped(self.encode(found.value), until)

    def attach(self, clock: Clock) -> None:
        """Give the layer to a stack that is starting; ``clock`` is its time source.

        :raises RuntimeError: the layer already serves another stack.
        """
        if self._attached:
            raise RuntimeError(f"layer {self.name!r} is already in use by another stack")
        self._attached = True
        self.clock = clock

    def detach(self) -> None:
        """Let go of the stack (called when it has stopped)."""
        self._attached = False
        self.clock = _not_attached

    def encode(self, value: object) -> object:
        """Return ``value`` as this layer stores it; raise SerializationError if it can't."""
        return value

    def decode(self, encoded: object) -> object:
        """Return what this layer's reads give back for ``encoded``, a result of
        :meth:`encode`: the value itself here; a serializing layer's round trip.

        The stack calls it once per write of a value, for a remote layer that is the
        first or comes just behind local layers: those store what it returns, and a
        load returns it, so a ``get`` returns an equal value of the same type whichever
        layer answers.

        :raises SerializationError: the encoding does not read back.
        """
        return encoded

    @abstractmethod
    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """The layer's actor task: serve until cancelled, then let go of resources."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        """Look ``keys`` up; return only those found (values decoded)."""

    @abstractmethod
    async def write_many(self, records: Mapping[str, Record]) -> None:
        """Store every record (values encoded), replacing existing entries and tags."""

    @abstractmethod
    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; absent keys are ignored."""

    @abstractmethod
    async def invalidate_tag(self, tag: str) -> set[str]:
        """Remove every entry carrying ``tag``; return the keys removed."""

    @abstractmethod
    async def clear(self) -> None:
        """Remove every entry this layer holds for the stack."""

    async def expire_many(self, keys: Sequence[str]) -> set[str]:
        """Mark ``keys`` stale now, each entry keeping its stale window (see
        :meth:`Record.expired`); an entry without one is removed. Return the keys found.

        This default, for a layer that keeps no stale windows, removes them (an expire
        without a stale window is a delete), after reading them to say which it found.
        """
        found = set(await self.get_many(keys))
        await self.delete_many(found)
        return found

    async def expire_tag(self, tag: str) -> set[str]:
        """:meth:`expire_many` for every entry carrying ``tag``; the keys found.

        This default, for a layer that keeps no stale windows, removes them.
        """
        return await self.invalidate_tag(tag)

    @abstractmethod
    def statistics(self) -> LayerStatistics:
        """A snapshot of the layer's counters."""


class LocalLayer(Layer):
    """An in-process layer whose operations complete without waiting.

    Each async method has a ``*_nowait`` twin; the async forms exist so the stack can
    treat every layer alike where speed does not matter.
    """

    local = True

    @abstractmethod
    def get_nowait(self, key: str, default: object = None) -> object:
        """The value for ``key``, or ``default``. No record is allocated."""

    def reader(
        self, missing: object, serving: Mapping[str, Serving] | None = None
    ) -> Callable[[str], object]:
        """A fast read for the stack's hot path: the value of a fresh entry not due for
        a refresh ahead, or (under a grant in ``serving``, counted in its ``hits``) of
        an early or stale one; else ``missing``.

        It may skip bookkeeping (the stack counts its hits and takes the slow path on
        ``missing``). The default reads through :meth:`get_many_nowait`.
        """
        grants: Mapping[str, Serving] = serving if serving is not None else {}

        def read(key: str) -> object:
            record = self.get_many_nowait((key,)).get(key)
            if record is None:
                return missing
            now = self.clock()
            if not record.is_due(now):
                return record.value
            granted = grants.get(key)
            if granted is not None and granted.until > now:
                granted.hits += 1
                return record.value
            return missing

        return read

    @abstractmethod
    def get_many_nowait(self, keys: Iterable[str]) -> dict[str, Record]:
        """Look ``keys`` up; return only those found.

        Counts a hit or a miss per key; an expired entry is a miss and is removed.
        """

    @abstractmethod
    def write_many_nowait(self, records: Mapping[str, Record]) -> None:
        """Store every record, replacing existing entries and their tags (may evict)."""

    @abstractmethod
    def delete_many_nowait(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; absent keys are ignored."""

    @abstractmethod
    def invalidate_tag_nowait(self, tag: str) -> set[str]:
        """Remove every entry carrying ``tag``; return the keys removed."""

    @abstractmethod
    def clear_nowait(self) -> None:
        """Remove every entry."""

    def expire_many_nowait(self, keys: Iterable[str]) -> set[str]:
        """Mark ``keys`` stale now, each entry keeping its stale window (see
        :meth:`Record.expired`); an entry without one is removed. Return the keys of the
        live entries found.

        This default, for a layer that keeps no stale windows, removes them.
        """
        found = set(self.get_many_nowait(keys))
        self.delete_many_nowait(found)
        return found

    def expire_tag_nowait(self, tag: str) -> set[str]:
        """:meth:`expire_many_nowait` for every entry carrying ``tag``.

        This default, for a layer that keeps no stale windows, removes them.
        """
        return self.invalidate_tag_nowait(tag)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        return self.get_many_nowait(keys)

    async def write_many(self, records: Mapping[str, Record]) -> None:
        self.write_many_nowait(records)

    async def delete_many(self, keys: Iterable[str]) -> None:
        self.delete_many_nowait(keys)

    async def invalidate_tag(self, tag: str) -> set[str]:
        return self.invalidate_tag_nowait(tag)

    async def clear(self) -> None:
        self.clear_nowait()

    async def expire_many(self, keys: Iterable[str]) -> set[str]:
        return self.expire_many_nowait(keys)

    async def expire_tag(self, tag: str) -> set[str]:
        return self.expire_tag_nowait(tag)
