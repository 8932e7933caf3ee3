"""Invalidations: every kind is one small class behind one protocol.

An :class:`Invalidation` says what it fences (the loads in flight it could make
stale), what it does to a local layer and to a remote one, and which bus messages
announce it. :class:`InvalidationPath` runs one the same way whether it was asked for
here or arrived from another stack on the bus:

- **here** (:meth:`InvalidationPath.run`): fence, apply to the layers that need I/O
  (slower first, through their guards, the bus message carried with the last change
  where it can), fence again, apply to every local layer, announce;
- **from the bus** (:meth:`InvalidationPath.receive`): fence, apply to every local
  layer, at once in the listener's task: once the listener counts a message as
  received, no read can see what it invalidated (the handlers are synchronous, and this
  is the loop's one thread).

Slower layers go first so that a reader cannot copy an entry from them into a local
layer that has already been cleared; the fences before and after keep loads in flight
from writing back what was invalidated. A new kind of invalidation is one more class
here, plus its bus operation (the message format in ``_bus`` and :func:`from_message`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from typing import ClassVar, TypeVar

from ._announce import Announcer
from ._bus import BusMessage, split_keys
from ._exceptions import LayerUnavailableError
from ._health import FAILED, NotSent, Skipped
from ._layer import Layer, LocalLayer
from ._parts import Parts
from ._redis_layer import Announcement, RedisLayer
from ._single_flight import SingleFlight

T = TypeVar("T")


class Invalidation(ABC):
    """One invalidation: its fence, its effect on a layer, its bus messages."""

    __slots__ = ()

    carried: ClassVar[bool] = True
    """Whether a carrier layer can send the bus messages with the remote change."""

    @abstractmethod
    def fence(self, single_flight: SingleFlight) -> None:
        """Mark the loads in flight that this could make stale."""

    @abstractmethod
    def apply_local(self, layer: LocalLayer) -> Iterable[str]:
        """Apply to a local layer; the keys removed (or expired), where they are
        counted."""

    @abstractmethod
    async def apply_remote(self, layer: Layer, announce: Announcement | None) -> Iterable[str]:
        """Apply to a layer that needs I/O, ``announce`` going with it (the carrier's
        only); the keys removed (or expired), where they are counted."""

    @abstractmethod
    def messages(self, origin: str) -> list[BusMessage]:
        """The bus messages that announce it to the other stacks."""


class _OfKeys(Invalidation):
    """An invalidation of some keys: it fences the loads in flight for them."""

    __slots__ = ("keys",)

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = keys

    def fence(self, single_flight: SingleFlight) -> None:
        single_flight.fence_keys(self.keys)


class _OfTag(Invalidation):
    """An invalidation of the entries carrying a tag: it fences the loads that could
    hold one (see :meth:`SingleFlight.fence_tag`)."""

    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def fence(self, single_flight: SingleFlight) -> None:
        single_flight.fence_tag(self.tag)


class DropKeys(_OfKeys):
    """``delete``/``delete_many``, and what a ``set`` elsewhere means here."""

    __slots__ = ()

    def apply_local(self, layer: LocalLayer) -> Iterable[str]:
        layer.delete_many_nowait(self.keys)
        return ()

    async def apply_remote(self, layer: Layer, announce: Announcement | None) -> Iterable[str]:
        if announce is not None and isinstance(layer, RedisLayer):
            await layer.delete_many(self.keys, announce=announce)
        else:
            await layer.delete_many(self.keys)
        return ()

    def messages(self, origin: str) -> list[BusMessage]:
        return split_keys(origin, self.keys)


class DropTag(_OfTag):
    """``invalidate_by_tag``: every entry carrying the tag."""

    __slots__ = ()

    def apply_local(self, layer: LocalLayer) -> Iterable[str]:
        return layer.invalidate_tag_nowait(self.tag)

    async def apply_remote(self, layer: Layer, announce: Announcement | None) -> Iterable[str]:
        if announce is not None and isinstance(layer, RedisLayer):
            return await layer.invalidate_tag(self.tag, announce=announce)
        return await layer.invalidate_tag(self.tag)

    def messages(self, origin: str) -> list[BusMessage]:
        return [BusMessage(origin, "tag", tag=self.tag)]


class DropAll(Invalidation):
    """``clear``, and a resubscribed bus (messages may have been missed)."""

    __slots__ = ()
    carried = False  # a clear is many requests (SCAN): announced after them

    def fence(self, single_flight: SingleFlight) -> None:
        single_flight.fence_all()

    def apply_local(self, layer: LocalLayer) -> Iterable[str]:
        layer.clear_nowait()
        return ()

    async def apply_remote(self, layer: Layer, announce: Announcement | None) -> Iterable[str]:
        await layer.clear()
        return ()

    def messages(self, origin: str) -> list[BusMessage]:
        return [BusMessage(origin, "clear")]


class ExpireKeys(_OfKeys):
    """``expire``/``expire_many``: the entries stay, stale from now, for their stale
    window (without one, this is :class:`DropKeys`). A fence like a drop's: a load in
    flight for the keys read what the caller has just declared out of date."""

    __slots__ = ()

    def apply_local(self, layer: LocalLayer) -> Iterable[str]:
        return layer.expire_many_nowait(self.keys)

    async def apply_remote(self, layer: Layer, announce: Announcement | None) -> Iterable[str]:
        if announce is not None and isinstance(layer, RedisLayer):
            return await layer.expire_many(self.keys, announce=announce)
        return await layer.expire_many(self.keys)

    def messages(self, origin: str) -> list[BusMessage]:
        return split_keys(origin, self.keys, "expire-keys")


class ExpireTag(_OfTag):
    """``expire_by_tag``: :class:`ExpireKeys` for every entry carrying the tag."""

    __slots__ = ()

    def apply_local(self, layer: LocalLayer) -> Iterable[str]:
        return layer.expire_tag_nowait(self.tag)

    async def apply_remote(self, layer: Layer, announce: Announcement | None) -> Iterable[str]:
        if announce is not None and isinstance(layer, RedisLayer):
            return await layer.expire_tag(self.tag, announce=announce)
        return await layer.expire_tag(self.tag)

    def messages(self, origin: str) -> list[BusMessage]:
        return [BusMessage(origin, "expire-tag", tag=self.tag)]


def from_message(message: BusMessage) -> Invalidation:
    """The invalidation a (checked) bus message announces."""
    op, tag = message.op, message.tag
    if op == "keys":
        return DropKeys(message.keys)
    if op == "expire-keys":
        return ExpireKeys(message.keys)
    if op == "tag" and tag is not None:
        return DropTag(tag)
    if op == "expire-tag" and tag is not None:
        return ExpireTag(tag)
    return DropAll()


class InvalidationPath:
    """Runs invalidations for one stack: its own and its peers'."""

    def __init__(self, parts: Parts, announcer: Announcer) -> None:
        self._parts = parts
        self._announcer = announcer

    async def run(self, change: Invalidation) -> int:
        """Apply ``change`` everywhere and announce it; the distinct keys it removed or
        expired, as far as this stack could see (the kinds that count them).

        A remote layer that fails (strict mode) stops the remote part, but the change is
        still applied to the local layers and announced surely before the error is
        raised: whatever the failed layer did, no instance serves the old entries from
        memory.

        :raises LayerUnavailableError: a remote layer failed (strict mode).
        """
        parts = self._parts
        deadline = self._announcer.deadline()
        messages = change.messages(parts.origin)
        announce = self._announcer.announcement(messages) if change.carried else None
        removed: set[str] = set()
        change.fence(parts.single_flight)
        remote = self._apply_remote(change, announce, removed)
        certain = await self.remote_part(change, messages, deadline, remote)
        change.fence(parts.single_flight)
        for local in parts.every_local:
            removed.update(change.apply_local(local))
        await self._announcer.send(messages, deadline, announce, surely=not certain)
        return len(removed)

    async def _apply_remote(
        self, change: Invalidation, announce: Announcement | None, removed: set[str]
    ) -> bool:
        """Apply to every remote layer; False if one failed (graceful mode) after it
        may have applied it: the outcome is unknown."""
        parts = self._parts
        certain = True
        for layer in parts.remote:
            carried = announce if self._announcer.carrier(layer, announce) else None
            guard = parts.guards[layer]
            found = await guard.call(change.apply_remote, layer, carried, write=True)
            if found is FAILED:
                certain = False
            elif not isinstance(found, Skipped):
                removed.update(found)
        return certain

    async def remote_part(
        self,
        change: Invalidation,
        messages: Sequence[BusMessage],
        deadline: float,
        remote: Awaitable[T],
    ) -> T:
        """Await ``remote``, the remote part of a change (an invalidation, or a write,
        whose meaning for memory is ``change``). If it fails after it may have reached
        Redis, or its caller gives up, its outcome is unknown: ``change`` is applied
        here and announced surely before the error goes on, so no instance serves the
        old entries from memory. A request refused before anything was sent changed
        nothing, and only raises.
        """
        try:
            return await remote
        except NotSent:
            raise
        except LayerUnavailableError:
            await self.settle_unknown(change, messages, deadline)
            raise
        except BaseException:  # cancelled: no await from here, the listener announces
            self.apply_here(change)
            self._announcer.later(messages)
            raise

    async def settle_unknown(
        self, change: Invalidation, messages: Sequence[BusMessage], deadline: float
    ) -> None:
        """A change with an unknown outcome: ``change`` here, announced surely."""
        self.apply_here(change)
        await self._announcer.send(messages, deadline, surely=True)

    def receive(self, message: BusMessage) -> None:
        """Another stack changed something: drop (or expire) it here (the listener
        calls this)."""
        self.apply_here(from_message(message))

    def resubscribed(self) -> None:
        """The bus may have lost messages while unsubscribed: forget everything local."""
        self.apply_here(DropAll())

    def apply_here(self, change: Invalidation) -> None:
        """Fence and apply ``change`` to the local layers, synchronously."""
        change.fence(self._parts.single_flight)
        for layer in self._parts.every_local:
            change.apply_local(layer)
