"""Helpers the unit and the integration tests share: a fetcher the test opens and
closes by hand, raw RESP over a socket, the metrics an OpenTelemetry reader holds, the
durations every duration argument refuses, a JSON serializer on the standard library, a
type-strict equality of values, and Redis layer envelopes written by hand."""

from __future__ import annotations

import math
import socket
import struct
from typing import TYPE_CHECKING, Any
from unittest import mock

import anyio

import layercache._serializers as serializers
from layercache import JsonSerializer
from layercache._serializers import MAGIC, MAX_WINDOW_MS
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


def stdlib_json() -> JsonSerializer:
    """The default serializer as it is where orjson is not installed (the suite has it):
    a serializer picks its JSON library when it is made."""
    with mock.patch.object(serializers, "orjson", None):
        return JsonSerializer()


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (``1 == 1.0 == True`` and
    ``(1,) == [1]``-like looseness not allowed; -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (
            a == b or (math.isnan(a) and math.isnan(b))
        )
    return a == b


def envelope_v1(body: bytes, *tags: str, serializer_id: int = JsonSerializer.id) -> bytes:
    """A value as the release before freshness windows wrote it: ``>3sBBH`` (magic,
    version 1, serializer id, tag count), the tags, the body."""
    parts = [struct.pack(">3sBBH", MAGIC, 1, serializer_id, len(tags))]
    for tag in tags:
        parts += [struct.pack(">H", len(tag.encode())), tag.encode()]
    return b"".join(parts) + body


def envelope_v2(stale_ms: int, early_ms: int, body: bytes = b'"forged"', tags: int = 0) -> bytes:
    """A version 2 header with these windows (and ``tags`` as its tag count), then
    ``body``: for forging."""
    return struct.pack(">3sBBHQQ", MAGIC, 2, JsonSerializer.id, tags, stale_ms, early_ms) + body


FORGED_WINDOWS: list[tuple[bytes, int | None]] = [
    (envelope_v2(1, 0), None),  # windows on a key without a TTL: it would be fresh forever
    (envelope_v2(0, 1), None),
    (envelope_v2(MAX_WINDOW_MS + 1, 0), 60_000),
    (envelope_v2(0, MAX_WINDOW_MS + 1), 60_000),
    (envelope_v2(2**64 - 1, 2**64 - 1), 60_000),
    (envelope_v2(0, 0)[:20], 60_000),  # the windows cut short
]
"""Values a Redis layer must take as corrupt, and the TTL (ms) they are stored with."""
FORGED_IDS = ["stale-no-ttl", "early-no-ttl", "stale-over", "early-over", "huge", "truncated"]
