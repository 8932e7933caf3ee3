"""The interface between the stack and its layers.

A layer is an actor: ``run()`` is its task, started in the stack's task group, which
calls ``task_status.started()`` once the layer can serve. The stack talks to a layer
through the async methods below; a *local* layer (in-process memory) also offers
synchronous ``*_nowait`` twins, which the stack uses on the hot path because a local
read needs no task and no channel round trip.

Values reach ``write_many`` already encoded by the layer's own :meth:`Layer.encode`,
which the stack calls for every layer before writing to any of them: a value one
layer cannot serialize is rejected before a single layer is changed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from anyio.abc import TaskStatus

from ._clock import Clock
from ._statistics import LayerStatistics

NO_TAGS: frozenset[str] = frozenset()


def _not_attached() -> float:
    raise RuntimeError("the layer is not attached to a running CacheStack")


@dataclass(frozen=True, slots=True)
class Invalidate:
    """Drop ``keys`` (posted to local layers by the invalidation listener)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InvalidateTag:
    """Drop every entry carrying ``tag``."""

    tag: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Drop everything."""


@dataclass(frozen=True, slots=True)
class Sweep:
    """Drop expired entries now."""


Message = Invalidate | InvalidateTag | Clear | Sweep
"""What other actors post to a local layer."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A value found in a layer, with what a backfill into faster layers needs."""

    value: object
    """The value, decoded."""
    ttl: float | None
    """Seconds the entry has left in the layer it was found in; None: no expiry."""
    tags: frozenset[str] = NO_TAGS
    """The entry's tags, so a backfilled copy can be invalidated by them too."""


@dataclass(frozen=True, slots=True)
class Write:
    """One entry to store: the value as encoded by this layer, and its final TTL."""

    key: str
    """The cache key, already checked by the stack."""
    value: object
    """What :meth:`Layer.encode` returned for the value (bytes for Redis)."""
    ttl: float | None
    """Seconds until expiry, already resolved by the stack; None: never expires."""
    tags: frozenset[str] = NO_TAGS
    """The entry's tags; they replace any tags the key had."""


class Layer(ABC):
    """A cache layer: a named store run as an actor task inside a stack."""

    local: bool = False
    """True for in-process layers: read synchronously, invalidated by the bus."""

    def __init__(self, *, name: str, ttl: float | None) -> None:
        self.name = name
        self.ttl = ttl
        self.clock: Clock = _not_attached
        self._attached = False

    def effective_ttl(self, ttl: float | None) -> float | None:
        """The TTL a write with ``ttl`` gets here (None = this layer's default)."""
        return self.ttl if ttl is None else ttl

    def backfill_ttl(self, remaining: float | None) -> float | None:
        """The TTL for copying in an entry with ``remaining`` seconds left elsewhere.

        Never longer than what the entry has left, nor than this layer's own TTL.
        """
        if remaining is None:
            return self.ttl
        if self.ttl is None:
            return remaining
        return min(remaining, self.ttl)

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

    @abstractmethod
    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """The layer's actor task: serve until cancelled, then let go of resources."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> dict[str, Hit]:
        """Look ``keys`` up; return only those found."""

    @abstractmethod
    async def write_many(self, writes: Sequence[Write]) -> None:
        """Store every write, replacing existing entries and their tags."""

    @abstractmethod
    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; absent keys are ignored."""

    @abstractmethod
    async def invalidate_tag(self, tag: str) -> set[str]:
        """Remove every entry carrying ``tag``; return the keys removed."""

    @abstractmethod
    async def clear(self) -> None:
        """Remove every entry this layer holds for the stack."""

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
        """The value for ``key``, or ``default``. No Hit is allocated."""

    def reader(self, missing: object) -> Callable[[str], object]:
        """A fast read for the stack's hot path: the value or ``missing``.

        It may skip bookkeeping (the stack counts its hits and takes the slow path on
        ``missing``). The default reads through :meth:`get_nowait`.
        """

        def read(key: str) -> object:
            return self.get_nowait(key, missing)

        return read

    @abstractmethod
    def get_many_nowait(self, keys: Iterable[str]) -> dict[str, Hit]:
        """Look ``keys`` up; return only those found, with their remaining TTL and tags.

        Counts a hit or a miss per key; an expired entry is a miss and is removed.
        """

    @abstractmethod
    def write_many_nowait(self, writes: Iterable[Write]) -> None:
        """Store every write, replacing existing entries and their tags (may evict)."""

    @abstractmethod
    def delete_many_nowait(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; absent keys are ignored."""

    @abstractmethod
    def invalidate_tag_nowait(self, tag: str) -> set[str]:
        """Remove every entry carrying ``tag``; return the keys removed."""

    @abstractmethod
    def clear_nowait(self) -> None:
        """Remove every entry."""

    def post(self, message: Message) -> None:
        """Hand ``message`` to the layer's actor; by default it is applied at once."""
        self.handle(message)

    def handle(self, message: Message) -> None:
        """Apply one message synchronously."""
        if isinstance(message, Invalidate):
            self.delete_many_nowait(message.keys)
        elif isinstance(message, InvalidateTag):
            self.invalidate_tag_nowait(message.tag)
        elif isinstance(message, Clear):
            self.clear_nowait()

    async def get_many(self, keys: Sequence[str]) -> dict[str, Hit]:
        return self.get_many_nowait(keys)

    async def write_many(self, writes: Sequence[Write]) -> None:
        self.write_many_nowait(writes)

    async def delete_many(self, keys: Iterable[str]) -> None:
        self.delete_many_nowait(keys)

    async def invalidate_tag(self, tag: str) -> set[str]:
        return self.invalidate_tag_nowait(tag)

    async def clear(self) -> None:
        self.clear_nowait()
