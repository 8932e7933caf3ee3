"""The freshness record: what every layer stores and returns for one key.

One type crosses between the stack and every layer, in both directions: a read returns
``{key: Record}`` with the value decoded, a write takes ``{key: Record}`` with the value
as that layer encodes it (:meth:`~layercache.Layer.encode`). Its deadlines are on the
stack's clock (the one every layer of the stack is attached to), so a record found in
one layer can be copied into another without converting anything but the value.

An entry's life, deadlines in order (each None: never):

- until ``refresh_at`` it is *fresh*, and a hit is just a hit;
- until ``fresh_until`` it is still fresh, but a hit with a fetcher starts a background
  refresh (refresh-ahead); without refresh-ahead ``refresh_at`` is ``fresh_until``;
- until ``stale_until`` it is *stale*: kept for stale-while-revalidate and fail-safe
  (the end of its physical TTL); without those windows ``stale_until`` is
  ``fresh_until``;
- after that it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NO_TAGS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Record:
    """One entry as a layer holds it: the value, its deadlines and its tags."""

    value: object
    """The value: decoded in what a read returns, encoded by the layer in a write."""
    fresh_until: float | None
    """When the entry stops being fresh, on the stack's clock; None: never."""
    stale_until: float | None
    """When the entry is gone (its physical TTL ends), on the stack's clock; None:
    never. Never before ``fresh_until``."""
    tags: frozenset[str] = NO_TAGS
    """The entry's tags; a write replaces any tags the key had."""
    refresh_at: float | None = field(kw_only=True)
    """From when a hit refreshes the entry ahead of its expiry; ``fresh_until`` without
    refresh-ahead (never after it; None only when ``fresh_until`` is None). The memory
    layer's hot path compares this one deadline."""

    @classmethod
    def new(
        cls,
        value: object,
        now: float,
        ttl: float | None,
        tags: frozenset[str] = NO_TAGS,
        *,
        stale: float = 0.0,
        refresh_ahead: float | None = None,
    ) -> Record:
        """A record fresh for ``ttl`` seconds from ``now`` (None: forever), then stale
        for ``stale`` more; refreshed ahead after ``refresh_ahead * ttl``."""
        if ttl is None:
            return cls(value, None, None, tags, refresh_at=None)
        fresh = now + ttl
        early = fresh if refresh_ahead is None else now + ttl * refresh_ahead
        return cls(value, fresh, fresh + stale if stale else fresh, tags, refresh_at=early)

    def remaining(self, now: float) -> float | None:
        """Seconds until the entry is gone (None: never); 0 or less once it is."""
        return None if self.stale_until is None else self.stale_until - now

    def is_fresh(self, now: float) -> bool:
        """Fresh at ``now`` (not yet past ``fresh_until``)."""
        until = self.fresh_until
        return until is None or until > now

    def is_due(self, now: float) -> bool:
        """Past its refresh-ahead point (fresh or not)."""
        early = self.refresh_at
        return early is not None and early <= now

    def capped(self, value: object, until: float | None) -> Record:
        """This record with ``value``, fresh no later than ``until`` (None: no cap),
        keeping its stale window after that (a copy into a layer with a shorter TTL: it
        can still serve stale there, and never lives longer than here)."""
        if until is None:
            if value is self.value:
                return self
            return Record(
                value, self.fresh_until, self.stale_until, self.tags, refresh_at=self.refresh_at
            )
        fresh, stale = self.fresh_until, self.stale_until
        window = 0.0 if fresh is None or stale is None else stale - fresh
        capped = until if fresh is None else min(fresh, until)
        early = capped if self.refresh_at is None else min(self.refresh_at, capped)
        gone = capped + window if stale is None else min(capped + window, stale)  # no float dust
        return Record(value, capped, gone, self.tags, refresh_at=early)

    def expired(self, now: float) -> Record | None:
        """This record made stale at ``now``, keeping its stale window (never living
        longer than it had left); None when it has no stale window (or is gone)."""
        fresh, stale = self.fresh_until, self.stale_until
        if fresh is None or stale is None or stale <= fresh or stale <= now:
            return None
        until = min(stale, now + (stale - fresh))
        moment = min(fresh, now)
        return Record(self.value, moment, until, self.tags, refresh_at=moment)


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry as :meth:`~layercache.CacheStack.get_entry` finds it, fresh or stale."""

    value: object
    """The value, as a ``get`` would return it."""
    layer: str
    """The name of the layer that had it (the first that did, fastest first)."""
    state: Literal["fresh", "stale"]
    """``"fresh"`` until its freshness ends, then ``"stale"`` (kept for
    stale-while-revalidate and fail-safe)."""
    fresh_for: float | None
    """Seconds of freshness left: None for an entry that never expires, 0 once stale."""
    tags: frozenset[str]
    """Its tags."""

    @classmethod
    def of(cls, record: Record, layer: str, now: float) -> Entry:
        """The entry ``record`` found in ``layer`` is at ``now``."""
        fresh_until = record.fresh_until
        fresh_for = None if fresh_until is None else max(0.0, fresh_until - now)
        state: Literal["fresh", "stale"] = "fresh" if record.is_fresh(now) else "stale"
        return cls(record.value, layer, state, fresh_for, record.tags)


class Serving:
    """Leave for the hot path to hand out a key's early or stale entry in the first
    memory layer while one refresh of it runs, until ``until`` (the stack's clock).

    Made and withdrawn by the single-flight actor (``SingleFlight.serve``), read by the
    memory layer's hot path (``MemoryLayer.reader``), which counts its ``hits``: both
    synchronous, on the loop's thread, so neither sees the other half-done."""

    __slots__ = ("hits", "stale", "until")

    def __init__(self, until: float, stale: bool) -> None:
        self.until = until
        self.stale = stale
        """The entry is stale (its hits are stale hits), not merely early."""
        self.hits = 0
