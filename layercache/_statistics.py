"""Frozen snapshots returned by ``CacheStack.statistics()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """One layer's counters at the moment of the snapshot.

    ``hits``/``misses`` count the layer's own lookups (a backfill read counts too);
    ``size`` and ``max_size`` are None where the layer cannot know them cheaply.
    ``state`` is ``healthy``, ``degraded``, ``open``, ``half-open`` or ``restarting`` as
    the stack sees the layer, or the layer's own ``disconnected``/``stopped``.
    """

    name: str
    kind: str
    state: str
    hits: int
    misses: int
    writes: int
    deletes: int
    evictions: int
    expirations: int
    size: int | None
    max_size: int | None
    errors: int = 0
    """Requests that failed (connection lost, timeout, error reply)."""
    corrupt: int = 0
    """Stored values that did not decode: treated as misses and deleted."""
    state_until: float | None = None
    """When a ``degraded`` or ``open`` state ends, on the stack's clock."""
    consecutive_failures: int = 0
    skipped: int = 0
    """Requests not sent because the layer was degraded, open or restarting."""
    dropped: int = 0
    """Writes and deletes given up in graceful mode (not sent, or failed)."""


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A stack's counters at the moment of the snapshot.

    - ``hits``: ``get`` calls answered from a layer; ``misses``: ``get`` calls no layer
      could answer (whether or not a fetcher then ran). ``hits == sum(layer_hits)``.
    - ``layer_hits``: for each layer name, the ``get`` calls that layer answered.
    - ``fetches``: fetcher calls started; ``fetch_errors``: those that raised.
    - ``loads_in_flight`` / ``waiters``: single-flight loads running now and the
      callers waiting on them.
    - ``stale_loads``: loads whose result was not written because the key was changed
      or invalidated while they ran (the callers still got the value).
    """

    hits: int
    misses: int
    fetches: int
    fetch_errors: int
    layer_hits: Mapping[str, int]
    loads_in_flight: int
    waiters: int
    stale_loads: int
    layers: tuple[LayerStatistics, ...]
    invalidations_sent: int = 0
    """Bus messages this stack published."""
    invalidations_received: int = 0
    """Bus messages from other stacks applied to the local layers."""
    invalidations_rejected: int = 0
    """Bus messages dropped: malformed, oversized, unsigned or forged."""
    bus_state: str | None = None
    """The bus as the stack sees it (``healthy``, ``degraded``, ``open``, …,
    ``unsubscribed``); None without a bus."""
