"""The memory layer actor: an LRU store with per-entry deadlines on the loop clock.

Owns: the entries (an ``OrderedDict`` of :class:`~layercache.Record` kept in
least-recently-used order), the index from tag to the keys carrying it, and the
layer's counters.

Its task takes no requests: it sweeps expired entries every ``sweep_interval`` seconds,
a chunk at a time, so entries nobody reads again do not hold memory until evicted.

Every other operation is a synchronous ``*_nowait`` handler that the stack calls from
the caller's task (reads, writes, backfills, invalidations) or from the invalidation
listener's task (invalidations from other instances). That is safe: there is one
thread, and no handler awaits, so no two of them interleave; and it is what makes an L1
hit a dictionary lookup instead of a channel round trip, and a bus message applied the
moment it is counted as received. The hot path's :meth:`MemoryLayer.reader` reads the
same dictionary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._layer import LocalLayer
from ._record import Record, Serving
from ._statistics import LayerStatistics
from ._validation import check_duration, check_max_size, check_name, check_ttl

SWEEP_CHUNK = 2048


class MemoryLayer(LocalLayer):
    """An in-process LRU layer.

    :param ttl: default seconds an entry lives; None means entries never expire.
    :param max_size: most entries held; the least recently used is evicted beyond it.
    :param name: unique within a stack; the key of ``statistics().layer_hits``.
    :param sweep_interval: seconds between sweeps that drop expired entries nobody
        reads (expired entries are never served either way).
    :raises TypeError, ValueError: for a bad argument.
    """

    def __init__(
        self,
        ttl: float | None = None,
        max_size: int = 10_000,
        name: str = "memory",
        *,
        sweep_interval: float = 30.0,
    ) -> None:
        super().__init__(name=check_name(name), ttl=check_ttl(ttl))
        self.max_size = check_max_size(max_size)
        self.sweep_interval = check_duration(sweep_interval, "sweep_interval")
        self._data: OrderedDict[str, Record] = OrderedDict()
        self._tags: dict[str, set[str]] = {}
        self._running = False
        self._hits = self._misses = self._writes = self._deletes = 0
        self._evictions = self._expirations = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryLayer {self.name!r} size={len(self._data)}/{self.max_size} "
            f"ttl={self.ttl} tags={len(self._tags)}>"
        )

    def __len__(self) -> int:
        return len(self._data)

    @property
    def tag_count(self) -> int:
        """Distinct tags indexed (only tags of entries held here are kept)."""
        return len(self._tags)

    # -- the actor ---------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        self._running = True
        try:
            task_status.started()
            while True:
                await anyio.sleep(self.sweep_interval)
                await self._sweep()
        finally:
            # Entries hold deadlines on this run's clock; another run (another loop,
            # trio's randomly offset clock) could not read them correctly.
            self._running = False
            self.clear_nowait()

    async def _sweep(self) -> int:
        removed = 0
        keys = list(self._data)
        for start in range(0, len(keys), SWEEP_CHUNK):
            removed += self._sweep_keys(keys[start : start + SWEEP_CHUNK])
            await anyio.lowlevel.checkpoint()
        return removed

    def sweep_nowait(self) -> int:
        """Drop every expired entry now; return how many went."""
        return self._sweep_keys(list(self._data))

    def _sweep_keys(self, keys: list[str]) -> int:
        now = self.clock()
        removed = 0
        for key in keys:
            entry = self._data.get(key)
            if entry is not None and entry.stale_until is not None and entry.stale_until <= now:
                self._remove(key, entry)
                self._expirations += 1
                removed += 1
        return removed

    # -- synchronous handlers ----------------------------------------------------

    def reader(
        self, missing: object, serving: Mapping[str, Serving] | None = None
    ) -> Callable[[str], object]:
        """The hot path for the stack that owns this layer: a closure over the store.

        ``read(key)`` returns the value of a fresh entry not due for a refresh ahead
        (refreshing its recency) or ``missing``. It counts nothing and removes nothing:
        on ``missing`` the stack takes the slow path, which reads the key again through
        :meth:`get_many_nowait` and does the accounting. The stack counts the hits. One
        Python frame instead of two is about a tenth of a hit's cost. Valid while the
        layer stays attached.

        ``serving`` (the stack's single-flight ``serving``): keys whose early or stale
        entry it may return too, while their refresh runs; it counts those in the
        grant's ``hits``. Read here in the caller's task, written by the single-flight
        actor's synchronous handlers, on one thread.
        """
        lookup = self._data.get
        touch = self._data.move_to_end
        clock = self.clock
        leave = (serving if serving is not None else {}).get

        def read(key: str) -> object:
            entry = lookup(key)
            if entry is not None:
                until = entry.refresh_at  # fresh, and not due for a refresh ahead
                if until is None or until > (now := clock()):
                    touch(key)
                    return entry.value
                # Early or stale: only while its refresh runs and leaves it to us.
                granted = leave(key)
                if granted is not None and granted.until > now:
                    granted.hits += 1
                    touch(key)
                    return entry.value
            return missing

        return read

    def _live(self, key: str, now: float) -> Record | None:
        """The entry for ``key`` unless absent or expired (an expired one is removed);
        counts the hit or the miss."""
        entry = self._data.get(key)
        if entry is None:
            self._misses += 1
            return None
        until = entry.stale_until
        if until is not None and until <= now:
            self._remove(key, entry)
            self._expirations += 1
            self._misses += 1
            return None
        self._data.move_to_end(key)
        self._hits += 1
        return entry

    def get_nowait(self, key: str, default: object = None) -> object:
        entry = self._live(key, self.clock())
        return default if entry is None else entry.value

    def get_many_nowait(self, keys: Iterable[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        now = self.clock()
        for key in keys:
            entry = self._live(key, now)
            if entry is not None:
                found[key] = entry
        return found

    def write_many_nowait(self, records: Mapping[str, Record]) -> None:
        data = self._data
        for key, record in records.items():
            old = data.pop(key, None)
            if old is not None and old.tags:
                self._unindex(key, old.tags)
            data[key] = record
            for tag in record.tags:
                keys = self._tags.get(tag)
                if keys is None:
                    self._tags[tag] = {key}
                else:
                    keys.add(key)
            self._writes += 1
        while len(data) > self.max_size:
            key, entry = data.popitem(last=False)
            if entry.tags:
                self._unindex(key, entry.tags)
            self._evictions += 1

    def delete_many_nowait(self, keys: Iterable[str]) -> None:
        for key in keys:
            entry = self._data.get(key)
            if entry is not None:
                self._remove(key, entry)
                self._deletes += 1

    def invalidate_tag_nowait(self, tag: str) -> set[str]:
        """Remove every entry carrying ``tag``; return the keys of the live ones.

        Expired entries go too but are not returned: whether a sweep or a read got
        to them first must not change the answer.
        """
        keys = self._tags.pop(tag, None)
        if not keys:
            return set()
        now = self.clock()
        live = set()
        for key in keys:
            entry = self._data.pop(key)
            others = entry.tags - {tag}
            if others:
                self._unindex(key, others)
            if entry.stale_until is None or entry.stale_until > now:
                live.add(key)
            else:
                self._expirations += 1
        self._deletes += len(live)
        return live

    def expire_many_nowait(self, keys: Iterable[str]) -> set[str]:
        """Mark ``keys`` stale now: each entry is replaced by its
        :meth:`~layercache.Record.expired` copy (same value and tags, stale from now for
        what its stale window allowed), or removed if it has no stale window. Return the
        keys of the live entries found (an expired one is removed, as a read would)."""
        now = self.clock()
        found = set()
        for key in keys:
            entry = self._data.get(key)
            if entry is not None and self._expire(key, entry, now):
                found.add(key)
        return found

    def expire_tag_nowait(self, tag: str) -> set[str]:
        """:meth:`expire_many_nowait` for every entry carrying ``tag``: the ones kept
        stale still carry it."""
        keys = self._tags.get(tag)
        if not keys:
            return set()
        now = self.clock()
        return {key for key in list(keys) if self._expire(key, self._data[key], now)}

    def _expire(self, key: str, entry: Record, now: float) -> bool:
        """Mark one entry stale at ``now`` (in place: its recency and tags stay); False
        if it was gone already."""
        until = entry.stale_until
        if until is not None and until <= now:
            self._remove(key, entry)
            self._expirations += 1
            return False
        expired = entry.expired(now)
        if expired is None:
            self._remove(key, entry)
            self._deletes += 1
        else:
            self._data[key] = expired
        return True

    def clear_nowait(self) -> None:
        self._deletes += len(self._data)
        self._data.clear()
        self._tags.clear()

    def _remove(self, key: str, entry: Record) -> None:
        del self._data[key]
        if entry.tags:
            self._unindex(key, entry.tags)

    def _unindex(self, key: str, tags: frozenset[str]) -> None:
        for tag in tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]

    def statistics(self) -> LayerStatistics:
        return LayerStatistics(
            name=self.name,
            kind="memory",
            state="running" if self._running else "stopped",
            hits=self._hits,
            misses=self._misses,
            writes=self._writes,
            deletes=self._deletes,
            evictions=self._evictions,
            expirations=self._expirations,
            size=len(self._data),
            max_size=self.max_size,
        )
