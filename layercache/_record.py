"""The freshness record: what every layer stores and returns for one key.

One type crosses between the stack and every layer, in both directions: a read returns
``{key: Record}`` with the value decoded, a write takes ``{key: Record}`` with the value
as that layer encodes it (:meth:`~layercache.Layer.encode`). Its deadlines are on the
stack's clock (the one every layer of the stack is attached to), so a record found in
one layer can be copied into another without converting anything but the value.

Until an entry's ``fresh_until`` it is *fresh*; until ``stale_until`` it may still be
held (the end of its physical TTL); after that it is gone. Today the two deadlines are
equal: the freshness windows that will separate them change this type, not each layer.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def new(
        cls, value: object, now: float, ttl: float | None, tags: frozenset[str] = NO_TAGS
    ) -> Record:
        """A record that lives ``ttl`` seconds from ``now`` (None: forever)."""
        until = None if ttl is None else now + ttl
        return cls(value, until, until, tags)

    def remaining(self, now: float) -> float | None:
        """Seconds until the entry is gone (None: never); 0 or less once it is."""
        return None if self.stale_until is None else self.stale_until - now

    def capped(self, value: object, until: float | None) -> Record:
        """This record with ``value``, living no later than ``until`` (None: no cap)."""
        if until is None:
            return (
                self
                if value is self.value
                else Record(value, self.fresh_until, self.stale_until, self.tags)
            )
        fresh = self.fresh_until
        stale = self.stale_until
        return Record(
            value,
            until if fresh is None else min(fresh, until),
            until if stale is None else min(stale, until),
            self.tags,
        )
