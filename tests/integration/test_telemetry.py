"""The optional OpenTelemetry hook beyond one test process: a stack without the hook must
not even import OpenTelemetry (checked in a fresh interpreter), and the Redis
coordinator's lock events become metrics (a real redis-server).

The SDK's in-memory reader and exporter stand in for a real backend.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from layercache import (
    CacheStack,
    MemoryLayer,
    OpenTelemetry,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache.testing import RedisServer

from ..helpers import _metrics

pytestmark = pytest.mark.anyio


def test_a_stack_without_the_hook_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, anyio\n"
        "from layercache import CacheStack, MemoryLayer\n"
        "async def main():\n"
        "    async with CacheStack([MemoryLayer()]) as cache:\n"
        "        async def fetch(): return 1\n"
        "        assert await cache.get('k', fetch) == 1\n"
        "anyio.run(main)\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


async def test_coordinator_lock_events_are_metrics(
    otel: tuple[OpenTelemetry, InMemoryMetricReader, InMemorySpanExporter],
    redis_server: RedisServer,
) -> None:
    hook, reader, _ = otel
    prefix = f"otel:{uuid.uuid4().hex[:8]}:"

    async def fetch() -> str:
        return "v"

    async with CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)],
        single_flight_coordinator=RedisSingleFlightCoordinator(redis_server.url),
        telemetry=hook,
    ) as cache:
        assert await cache.get("k", fetch) == "v"
        metrics = _metrics(reader)
    stack = ("layercache.stack", "catalog")
    assert metrics[("layercache.coordinator.locks", (("layercache.event", "acquired"), stack))] == 1
    assert metrics[("layercache.coordinator.locks", (("layercache.event", "lost"), stack))] == 0
