"""The optional OpenTelemetry hook: metrics read from ``statistics()``, spans for loads.

The SDK's in-memory reader and exporter (the ``otel`` fixture) stand in for a real
backend. That a stack without the hook does not even import OpenTelemetry, and the Redis
coordinator's metrics, are checked in tests/integration/test_telemetry.py.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from layercache import CacheStack, Freshness, MemoryLayer, OpenTelemetry
from layercache.testing import FakeClock

from ..helpers import GatedFetcher, _metrics

pytestmark = pytest.mark.anyio


async def test_metrics_follow_the_statistics(
    otel: tuple[OpenTelemetry, InMemoryMetricReader, InMemorySpanExporter],
) -> None:
    hook, reader, _ = otel

    async def fetch() -> str:
        return "v"

    async with CacheStack([MemoryLayer(name="l1")], telemetry=hook) as cache:
        assert await cache.get("k", fetch) == "v"
        assert await cache.get("k", fetch) == "v"
        assert await cache.get("absent") is None
        metrics = _metrics(reader)
    stack = ("layercache.stack", "catalog")
    assert metrics[("layercache.hits", (("layercache.layer", "l1"), stack))] == 1
    assert metrics[("layercache.misses", (stack,))] == 2
    assert metrics[("layercache.fetches", (stack,))] == 1
    assert metrics[("layercache.fetch_errors", (stack,))] == 0
    assert metrics[("layercache.loads_in_flight", (stack,))] == 0
    sent = (("layercache.direction", "sent"), stack)
    assert metrics[("layercache.invalidations", sent)] == 0
    l1 = (("layercache.layer", "l1"), stack)
    assert metrics[("layercache.layer.misses", l1)] >= 2
    assert metrics[("layercache.layer.dropped", l1)] == 0
    assert metrics[("layercache.waiters", (stack,))] == 0
    assert metrics[("layercache.bus.dropped", (stack,))] == 0
    assert not any(name == "layercache.coordinator.locks" for name, _ in metrics)
    # Once the stack has exited there is nothing left to observe.
    assert not any(name == "layercache.fetches" for name, _ in _metrics(reader))


async def test_the_freshness_counters_are_exported(
    otel: tuple[OpenTelemetry, InMemoryMetricReader, InMemorySpanExporter],
) -> None:
    hook, reader, _ = otel
    clock = FakeClock()
    fetch = GatedFetcher("new")
    freshness = Freshness(stale_while_revalidate=60)
    async with CacheStack(
        [MemoryLayer(name="l1")], telemetry=hook, clock=clock, freshness=freshness
    ) as cache:
        await cache.set("k", "old", ttl=10)
        clock.advance(20)
        assert await cache.get("k", fetch) == "old"
        await fetch.started.wait()
        metrics = _metrics(reader)
        fetch.open()
    stack = ("layercache.stack", "catalog")
    assert metrics[("layercache.stale_hits", (stack,))] == 1
    assert metrics[("layercache.refreshes", (stack,))] == 1
    for name in ("refreshes_skipped", "refresh_errors", "stale_on_error", "fetch_timeouts"):
        assert metrics[(f"layercache.{name}", (stack,))] == 0


async def test_each_load_is_a_span_with_its_source_and_errors(
    otel: tuple[OpenTelemetry, InMemoryMetricReader, InMemorySpanExporter],
) -> None:
    hook, _, exporter = otel

    async def fetch() -> str:
        return "v"

    async def fail() -> str:
        raise RuntimeError("origin down")

    async with CacheStack([MemoryLayer()], telemetry=hook) as cache:
        await cache.get("k", fetch)
        await cache.get("k", fetch)  # a memory hit: no load, no span
        with pytest.raises(RuntimeError):
            await cache.get("bad", fail)
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["layercache.load", "layercache.load"]
    ok, failed = spans
    assert ok.attributes is not None
    assert dict(ok.attributes) == {
        "layercache.stack": "catalog",
        "layercache.key": "k",
        "layercache.source": "fetcher",
    }
    assert failed.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in failed.events)


async def test_keys_can_stay_out_of_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = OpenTelemetry(tracer_provider=provider, record_keys=False)

    async def fetch() -> str:
        return "v"

    async with CacheStack([MemoryLayer()], telemetry=hook) as cache:
        await cache.get("user:42:email", fetch)
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert "layercache.key" not in span.attributes


async def test_a_hook_serves_one_stack_at_a_time(
    otel: tuple[OpenTelemetry, InMemoryMetricReader, InMemorySpanExporter],
) -> None:
    hook, _, _ = otel
    async with CacheStack([MemoryLayer()], telemetry=hook):
        with pytest.raises(RuntimeError, match="already in use"):
            async with CacheStack([MemoryLayer()], telemetry=hook):
                pass
    async with CacheStack([MemoryLayer()], telemetry=hook):
        pass


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="OpenTelemetry"):
        CacheStack([MemoryLayer()], telemetry=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        OpenTelemetry("")
