"""Helpers the unit and the integration tests share: a fetcher the test opens and
closes by hand, raw RESP over a socket, the metrics an OpenTelemetry reader holds, and
the durations every duration argument refuses."""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING, Any

import anyio

from layercache._validation import MAX_TTL

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

BAD_DURATIONS: list[tuple[Any, type[Exception]]] = [
    (None, TypeError),  # only a TTL may be None (the layer's default)
    ("1", TypeError),
    (True, TypeError),
    (0, ValueError),
    (-1.0, ValueError),
    (math.inf, ValueError),
    (math.nan, ValueError),
    (MAX_TTL * 10, ValueError),
]
"""Every duration (timeout, lease, interval…) refuses these, with the error given."""


class GatedFetcher:
    """A fetcher that counts calls and blocks until the test calls ``open()``.

    Create it inside the test (it holds anyio events). ``started`` is set when a call
    begins; ``cancelled`` records whether a call was cancelled while blocked.
    """

    def __init__(self, value: object | None = None, error: Exception | None = None) -> None:
        self.value = object() if value is None else value
        self.error = error
        self.calls = 0
        self.cancelled = False
        self.started = anyio.Event()
        self._gate = anyio.Event()

    def open(self) -> None:
        self._gate.set()

    async def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        try:
            await self._gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


def resp(*words: str) -> bytes:
    """One command in RESP, as a client sends it."""
    encoded = [word.encode() for word in words]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)


def first_reply_line(connection: socket.socket, *words: str) -> bytes:
    """Send one command over a raw socket and return the first line of the reply."""
    connection.sendall(resp(*words))
    with connection.makefile("rb") as reader:
        return reader.readline()


def _metrics(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    """Each data point the reader holds: ``{(metric name, sorted attributes): value}``."""
    data = reader.get_metrics_data()
    found: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    if data is None:  # nothing was observed
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = tuple(sorted((point.attributes or {}).items()))
                    found[(metric.name, attributes)] = getattr(point, "value", None)
    return found
