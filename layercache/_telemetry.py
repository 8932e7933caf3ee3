"""Optional OpenTelemetry instrumentation: metrics from ``statistics()``, spans for loads.

Nothing here touches OpenTelemetry unless a stack is given
``telemetry=OpenTelemetry(...)``; without it a stack pays nothing, and the package need
not be installed. With it:

- metrics are *observable* instruments whose callbacks read the stack's
  ``statistics()`` when the SDK collects, so the hot path does no extra work;
- every load with a fetcher (the slow path: slower layers, then the fetcher) runs in a
  ``layercache.load`` span, a child of the first caller's current span (loads see
  their first caller's context), with the key and where the value came from.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ._statistics import CacheStatistics


class OpenTelemetry:
    """Report a stack's metrics and load spans to OpenTelemetry
    (``CacheStack(telemetry=OpenTelemetry())``; needs ``pip install layercache[otel]``).

    Metrics, each with the attribute ``layercache.stack`` (``name``), all monotonic
    counters but the two gauges: ``layercache.hits`` (per ``layercache.layer``),
    ``layercache.misses``, ``layercache.fetches``, ``layercache.fetch_errors``,
    ``layercache.stale_loads``, and the freshness counters ``layercache.stale_hits``,
    ``.refreshes``, ``.refreshes_skipped``, ``.refresh_errors``, ``.stale_on_error``
    and ``.fetch_timeouts``; per layer (``layercache.layer``)
    ``layercache.layer.misses``, ``.errors``, ``.dropped``, ``.skipped`` and ``.corrupt``;
    ``layercache.invalidations`` (per ``layercache.direction``: sent, received,
    rejected) and ``layercache.bus.dropped``; ``layercache.coordinator.locks`` (per
    ``layercache.event``: acquired, waits, takeovers, timeouts, lost); the gauges
    ``layercache.loads_in_flight`` and ``layercache.waiters``.

    Spans: ``layercache.load`` around each load with a fetcher, with the attributes
    ``layercache.key`` and ``layercache.source`` (the layer that had the value, or
    ``fetcher``); a fetcher's exception is recorded on it.

    :param name: the ``layercache.stack`` attribute, to tell several stacks apart.
    :param meter_provider: default: OpenTelemetry's global one.
    :param tracer_provider: default: OpenTelemetry's global one.
    :param record_keys: put the key in span attributes (turn off if keys hold data that
        must not leave the process).
    :raises ImportError: ``opentelemetry-api`` is not installed.
    """

    def __init__(
        self,
        name: str = "layercache",
        *,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        record_keys: bool = True,
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as error:
            raise ImportError(
                "OpenTelemetry() needs the opentelemetry-api package: "
                "pip install 'layercache[otel]'"
            ) from error
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        self.name = name
        self.record_keys = record_keys
        version = importlib.metadata.version("layercache")
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "layercache", version
        )
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("layercache", version)
        self._observation = metrics.Observation
        self._statistics: Callable[[], CacheStatistics] | None = None
        self._in_use = False
        for instrument, read in _COUNTERS.items():
            meter.create_observable_counter(instrument, callbacks=[self._callback(read)])
        meter.create_observable_gauge(
            "layercache.loads_in_flight",
            callbacks=[self._callback(lambda s: [(s.loads_in_flight, {})])],
        )
        meter.create_observable_gauge(
            "layercache.waiters", callbacks=[self._callback(lambda s: [(s.waiters, {})])]
        )

    def __repr__(self) -> str:
        return f"<OpenTelemetry {self.name!r} {'attached' if self._in_use else 'idle'}>"

    def _callback(
        self, read: Callable[[CacheStatistics], Iterable[tuple[int, dict[str, str]]]]
    ) -> Callable[[Any], Iterator[Any]]:
        def observe(options: Any) -> Iterator[Any]:
            statistics = self._statistics
            if statistics is None:
                return  # no stack running: nothing to report
            for value, attributes in read(statistics()):
                yield self._observation(value, {"layercache.stack": self.name, **attributes})

        return observe

    def attach(self, statistics: Callable[[], CacheStatistics]) -> None:
        """Internal (the stack's).

        Report the statistics of the stack being entered (one stack at a time)."""
        if self._in_use:
            raise RuntimeError("this OpenTelemetry hook is already in use by another stack")
        self._in_use = True
        self._statistics = statistics

    def detach(self) -> None:
        """Internal (the stack's).

        Stop reporting: the stack exited."""
        self._in_use = False
        self._statistics = None

    @contextmanager
    def load_span(self, key: str) -> Iterator[Callable[[str | None], None]]:
        """Internal (the stack's).

        Run a load in a span; the caller reports where the value came from."""
        attributes = {"layercache.stack": self.name}
        if self.record_keys:
            attributes["layercache.key"] = key
        with self._tracer.start_as_current_span("layercache.load", attributes=attributes) as span:

            def source(layer: str | None) -> None:
                span.set_attribute("layercache.source", layer or "fetcher")

            yield source


def _per_layer(field: str) -> Callable[[CacheStatistics], Iterable[tuple[int, dict[str, str]]]]:
    """A reader of one :class:`~layercache.LayerStatistics` counter, per layer."""
    return lambda s: (
        (getattr(layer, field), {"layercache.layer": layer.name}) for layer in s.layers
    )


_COUNTERS: dict[str, Callable[[CacheStatistics], Iterable[tuple[int, dict[str, str]]]]] = {
    "layercache.hits": lambda s: (
        (hits, {"layercache.layer": layer}) for layer, hits in s.layer_hits.items()
    ),
    "layercache.misses": lambda s: [(s.misses, {})],
    "layercache.fetches": lambda s: [(s.fetches, {})],
    "layercache.fetch_errors": lambda s: [(s.fetch_errors, {})],
    "layercache.stale_loads": lambda s: [(s.stale_loads, {})],
    "layercache.stale_hits": lambda s: [(s.stale_hits, {})],
    "layercache.refreshes": lambda s: [(s.refreshes, {})],
    "layercache.refreshes_skipped": lambda s: [(s.refreshes_skipped, {})],
    "layercache.refresh_errors": lambda s: [(s.refresh_errors, {})],
    "layercache.stale_on_error": lambda s: [(s.stale_on_error, {})],
    "layercache.fetch_timeouts": lambda s: [(s.fetch_timeouts, {})],
    "layercache.layer.misses": _per_layer("misses"),
    "layercache.layer.errors": _per_layer("errors"),
    "layercache.layer.dropped": _per_layer("dropped"),
    "layercache.layer.skipped": _per_layer("skipped"),
    "layercache.layer.corrupt": _per_layer("corrupt"),
    "layercache.bus.dropped": lambda s: [(s.bus_dropped, {})],
    "layercache.coordinator.locks": lambda s: (
        []
        if s.coordinator is None
        else [
            (getattr(s.coordinator, event), {"layercache.event": event})
            for event in ("acquired", "waits", "takeovers", "timeouts", "lost")
        ]
    ),
    "layercache.invalidations": lambda s: [
        (s.invalidations_sent, {"layercache.direction": "sent"}),
        (s.invalidations_received, {"layercache.direction": "received"}),
        (s.invalidations_rejected, {"layercache.direction": "rejected"}),
    ],
}
"""Each observable counter and how to read it from a statistics snapshot."""
