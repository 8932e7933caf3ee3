"""Fixtures for every test. Every async test runs once on asyncio and once on trio.

The real-server fixtures (tests/redis_fixtures.py) are not here: only
tests/integration/ and tests/artifacts/ get them, from their own conftest, so a unit
test cannot start a server by asking for one. The embedded (in-process fakeredis)
server is for everyone.
"""

from __future__ import annotations

import uuid

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from layercache import OpenTelemetry
from layercache.testing import FakeClock

from .redis_fixtures import embedded_redis as embedded_redis


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A Redis key prefix no other test uses (tests share one server per session)."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return f"{module}:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def otel() -> tuple[OpenTelemetry, InMemoryMetricReader, InMemorySpanExporter]:
    """The OpenTelemetry hook, on the SDK's in-memory metric reader and span exporter."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = OpenTelemetry(
        "catalog",
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
    )
    return hook, reader, exporter
