"""Frozen snapshots returned by ``CacheStack.statistics()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """One layer's counters at the moment of the snapshot (``statistics().layers``).

    The counters run from the layer's creation and are never reset. ``hits`` and
    ``misses`` count the layer's own lookups, not ``get`` calls: one call can look a
    key up in a layer more than once (a load reads the faster layers again before it
    fetches), so per-call figures are in :class:`CacheStatistics`.
    """

    name: str
    """The layer's name, unique within its stack."""
    kind: str
    """``"memory"``, ``"redis"``, or what a custom layer reports."""
    state: str
    """The layer as the stack sees it: ``healthy``, ``degraded`` (skipped until
    ``state_until``), ``open`` (circuit breaker, until ``state_until``), ``half-open``
    (one probe allowed), ``restarting`` (its actor crashed), ``misconfigured`` (its last
    request failed on a configuration error, such as a password or an ACL change on the
    server: until a request succeeds); or, when none of those
    applies, the layer's own ``disconnected`` (Redis not connected right now) or
    ``stopped`` (its stack is not running)."""
    hits: int
    """Lookups this layer answered."""
    misses: int
    """Lookups this layer could not answer (absent or expired)."""
    writes: int
    """Entries written: ``set``, stored fetch results and backfills from slower layers."""
    deletes: int
    """Entries removed by ``delete``, tag invalidation and (memory) ``clear`` or bus
    messages; for Redis, only names that existed."""
    evictions: int
    """Entries dropped to stay within ``max_size`` (least recently used first); always
    0 for Redis, whose own evictions the layer cannot see."""
    expirations: int
    """Expired entries removed (on read, by a sweep, or by a tag invalidation); always
    0 for Redis, which expires entries by itself."""
    size: int | None
    """Entries held now; None where the layer cannot know it cheaply (Redis)."""
    max_size: int | None
    """The most entries the layer holds; None for no bound of its own (Redis)."""
    errors: int = 0
    """Requests that failed (connection lost, timeout, error reply)."""
    corrupt: int = 0
    """Stored values that did not decode: treated as misses and deleted."""
    state_until: float | None = None
    """When a ``degraded`` or ``open`` state ends, on the stack's clock."""
    consecutive_failures: int = 0
    """Failed requests in a row; a success resets it. The breaker opens at its
    ``threshold``."""
    skipped: int = 0
    """Requests not sent because the layer was degraded, open or restarting."""
    dropped: int = 0
    """Writes and deletes given up in graceful mode (not sent, or failed)."""
    configuration_errors: int = 0
    """Of ``errors``, those the server's configuration caused (a refused login, an ACL
    that forbids a command): retrying cannot fix them (``state="misconfigured"``)."""


@dataclass(frozen=True, slots=True)
class CoordinatorStatistics:
    """The distributed single-flight coordinator's counters (``statistics().coordinator``)."""

    state: str
    """The coordinator as the stack sees it (``healthy``, ``degraded``, ``open``,
    ``half-open``, ``restarting``, ``misconfigured``), or ``stopped`` outside the
    stack's block."""
    acquired: int
    """Locks this stack took (it fetched, or found the value just written)."""
    waits: int
    """Loads that found the lock held elsewhere and waited for the value."""
    takeovers: int
    """Waiting loads that took the lock over and fetched (the holder died or failed)."""
    timeouts: int
    """Waits that ran out twice (the load raised or, graceful, fetched)."""
    lost: int
    """Held locks that a change to the key (or an expired lease) took away; the load's
    result was not stored."""
    held: int
    """Locks held now."""
    errors: int = 0
    """Lock requests that failed (Redis unreachable, too slow, or an error reply)."""
    skipped: int = 0
    """Lock requests not sent because the coordinator was degraded or open: those loads
    had single-flight per process only."""
    consecutive_failures: int = 0
    """Failures since the last success (what the circuit breaker counts)."""
    configuration_errors: int = 0
    """Of ``errors``, those the server's configuration caused (see
    :attr:`LayerStatistics.configuration_errors`)."""
    refreshes_elsewhere: int = 0
    """Background refreshes that found the key's lock held by another process and left
    the refresh to it (serving what they had)."""


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A stack's counters at the moment of the snapshot (``cache.statistics()``).

    Counters run from the stack's creation and are never reset: rates are differences
    between two snapshots. ``get_many`` counts each key it was asked for as one call.
    """

    hits: int
    """``get`` calls answered from a layer; ``hits == sum(layer_hits.values())``."""
    misses: int
    """``get`` calls no layer could answer, whether or not a fetcher then ran (a caller
    that joined a load in flight counts too)."""
    fetches: int
    """Fetcher calls started: with single-flight, one per load, not one per caller."""
    fetch_errors: int
    """Fetcher calls that raised (or returned no awaitable)."""
    layer_hits: Mapping[str, int]
    """Layer name → ``get`` calls that layer answered (a read-only mapping)."""
    loads_in_flight: int
    """Single-flight loads running now (fetching, or reading the slower layers)."""
    waiters: int
    """Callers waiting on those loads now."""
    stale_loads: int
    """Loads whose result was not written because the key was changed or invalidated
    while they ran (their callers still got the value)."""
    layers: tuple[LayerStatistics, ...]
    """One :class:`LayerStatistics` per layer, fastest first."""
    invalidations_sent: int = 0
    """Bus messages this stack published."""
    invalidations_carried: int = 0
    """Of those, the ones a Redis layer on the bus's server sent in the same batch as
    the change they announce (one round trip sooner than on the bus's connection)."""
    invalidations_received: int = 0
    """Bus messages from other stacks applied to the local layers."""
    invalidations_rejected: int = 0
    """Bus messages dropped: malformed, oversized, unsigned or forged."""
    invalidations_deferred: int = 0
    """Bus messages that could not go out with their change (the call's time was up, or
    the change's outcome was unknown and the bus failed) and were kept to be published
    as soon as Redis takes them."""
    bus_state: str | None = None
    """The bus as the stack sees it (``healthy``, ``degraded``, ``open``, …,
    ``misconfigured``, ``unsubscribed``); None without a bus."""
    coordinator: CoordinatorStatistics | None = None
    """The distributed single-flight coordinator's counters; None without one."""
    bus_errors: int = 0
    """Publishes on the bus that failed (Redis unreachable, too slow, an error reply)."""
    bus_skipped: int = 0
    """Publishes not attempted because the bus was degraded or open."""
    bus_dropped: int = 0
    """Invalidations given up in graceful mode (skipped or failed): other instances may
    serve the affected entries from their memory layers until those expire."""
    bus_configuration_errors: int = 0
    """Of ``bus_errors``, those the server's configuration caused (see
    :attr:`LayerStatistics.configuration_errors`)."""
    stale_hits: int = 0
    """``get`` calls answered with a stale entry (stale-while-revalidate, a refresh
    skipped or backed off, or a fail-safe answer); also counted in ``hits``."""
    refreshes: int = 0
    """Background refreshes started (stale-while-revalidate, refresh-ahead)."""
    refreshes_skipped: int = 0
    """Background refreshes not started because as many as the limit were running."""
    refresh_errors: int = 0
    """Background refreshes whose fetch failed or ran past its time limit."""
    stale_on_error: int = 0
    """Loads answered with the stale entry because the fetch failed or ran past
    ``hard_timeout`` (fail-safe); the error is logged, never cached."""
    fetch_timeouts: int = 0
    """Fetches cancelled at ``hard_timeout`` (or at the background time limit)."""
