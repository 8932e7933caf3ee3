"""The stack's own counters, and the assembly of ``statistics()`` from every part.

:class:`Tally` holds what the read and load paths count per ``get`` call (hits per
layer, misses, fetches); :func:`snapshot` puts it together with the layers', the health
guards', the bus listener's and the coordinator's counters into one frozen
:class:`~layercache.CacheStatistics`. Reading is all it does, so it is safe from any
thread (a metrics exporter's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._statistics import CacheStatistics, CoordinatorStatistics, LayerStatistics

if TYPE_CHECKING:
    from ._parts import Parts
    from ._single_flight import SingleFlight


class Tally:
    """Per-call counters of one stack (the hot path's L1 hits are the stack's own)."""

    __slots__ = (
        "fetch_errors",
        "fetch_timeouts",
        "fetches",
        "layer_hits",
        "misses",
        "refresh_errors",
        "refreshes",
        "refreshes_skipped",
        "stale_hits",
        "stale_loads",
        "stale_on_error",
    )

    def __init__(self, names: Sequence[str]) -> None:
        self.layer_hits = dict.fromkeys(names, 0)
        self.misses = 0
        self.fetches = 0
        self.fetch_errors = 0
        self.stale_loads = 0
        self.stale_hits = 0
        self.refreshes = 0
        self.refreshes_skipped = 0
        self.refresh_errors = 0
        self.stale_on_error = 0
        self.fetch_timeouts = 0


def snapshot(parts: Parts, fast_hits: int, open_: bool) -> CacheStatistics:
    """The stack's statistics now; ``fast_hits`` are the hot path's L1 hits."""
    tally = parts.tally
    layer_hits = dict(tally.layer_hits)
    if parts.local:
        layer_hits[parts.local[0].name] += fast_hits
    listener = parts.listener
    single_flight = parts.single_flight
    return CacheStatistics(
        hits=sum(layer_hits.values()),
        misses=tally.misses,
        fetches=tally.fetches,
        fetch_errors=tally.fetch_errors,
        layer_hits=MappingProxyType(layer_hits),
        loads_in_flight=single_flight.loads_in_flight,
        waiters=single_flight.waiters,
        stale_loads=tally.stale_loads,
        stale_hits=tally.stale_hits + _served_stale(single_flight),
        refreshes=tally.refreshes,
        refreshes_skipped=tally.refreshes_skipped,
        refresh_errors=tally.refresh_errors,
        stale_on_error=tally.stale_on_error,
        fetch_timeouts=tally.fetch_timeouts,
        invalidations_sent=listener.sent if listener else 0,
        invalidations_carried=listener.carried_sent if listener else 0,
        invalidations_received=listener.received.value if listener else 0,
        invalidations_rejected=sum(listener.rejected.values()) if listener else 0,
        invalidations_deferred=listener.deferred if listener else 0,
        bus_state=_bus_state(parts),
        layers=tuple(_layers(parts, fast_hits)),
        coordinator=_coordinator(parts, open_),
        **_bus_health(parts),
    )


def _bus_health(parts: Parts) -> dict[str, int]:
    listener = parts.listener
    health = parts.guards.get(listener) if listener is not None else None
    if health is None:
        return {}
    return {
        "bus_errors": health.failures,
        "bus_skipped": health.skipped,
        "bus_dropped": health.dropped,
        "bus_configuration_errors": health.configuration_errors,
    }


def _bus_state(parts: Parts) -> str | None:
    listener = parts.listener
    if listener is None:
        return None
    state = parts.guards[listener].state()
    if state == "healthy" and not listener.subscribed:
        return "unsubscribed"
    return state


def _coordinator(parts: Parts, open_: bool) -> CoordinatorStatistics | None:
    distributed = parts.distributed
    if distributed is None:
        return None
    health = parts.guards.get(distributed)
    if health is None or not open_:
        return distributed.statistics("stopped")
    return replace(
        distributed.statistics(health.state()),
        errors=health.failures,
        skipped=health.skipped,
        consecutive_failures=health.consecutive_failures,
        configuration_errors=health.configuration_errors,
    )


def _layers(parts: Parts, fast_hits: int) -> Iterable[LayerStatistics]:
    for index, layer in enumerate(parts.layers):
        stats = layer.statistics()
        if index == 0 and parts.local:
            # The hot path reads the first layer without its bookkeeping.
            stats = replace(stats, hits=stats.hits + fast_hits)
        health = parts.guards.get(layer)
        if health is not None:
            state = health.state()
            if state == "healthy" and stats.state in ("disconnected", "stopped"):
                state = stats.state
            stats = replace(
                stats,
                state=state,
                state_until=health.until(),
                errors=max(stats.errors, health.failures),
                consecutive_failures=health.consecutive_failures,
                skipped=health.skipped,
                dropped=health.dropped,
                configuration_errors=health.configuration_errors,
            )
        yield stats


def _served_stale(single_flight: SingleFlight) -> int:
    """The hot path's stale hits: under grants withdrawn, and under those still held."""
    live = sum(granted.hits for granted in single_flight.serving.values() if granted.stale)
    return single_flight.stale_served + live
