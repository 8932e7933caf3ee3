"""The stacks the scenarios build: one app instance each, isolated by a fresh prefix."""

from __future__ import annotations

import uuid

from .._bus import RedisInvalidationBus
from .._distributed import RedisSingleFlightCoordinator
from .._memory import MemoryLayer
from .._options import CircuitBreaker, GracefulDegradation
from .._redis_layer import DEFAULT_TIMEOUT, RedisLayer
from .._stack import CacheStack

L1_TTL = 60.0
L2_TTL = 300.0


def new_prefix(scenario: str) -> str:
    """A key prefix no other run uses, so a real server's other data is never touched."""
    return f"layercache-demo:{scenario}:{uuid.uuid4().hex[:8]}:"


def instance(
    redis_url: str,
    prefix: str,
    *,
    bus: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    graceful_degradation: GracefulDegradation | None = None,
    circuit_breaker: CircuitBreaker | None = None,
    single_flight: bool = False,
) -> CacheStack:
    """An app instance: a memory layer in front of the shared Redis, and with ``bus``,
    an invalidation bus on a channel of the run's own; with ``single_flight``, the
    Redis single-flight coordinator."""
    return CacheStack(
        [
            MemoryLayer(ttl=L1_TTL),
            RedisLayer(url=redis_url, prefix=prefix, ttl=L2_TTL, timeout=timeout),
        ],
        invalidation_bus=(
            RedisInvalidationBus(url=redis_url, channel=f"{prefix}invalidation") if bus else None
        ),
        single_flight_coordinator=(
            RedisSingleFlightCoordinator(url=redis_url, timeout=timeout) if single_flight else None
        ),
        graceful_degradation=graceful_degradation,
        circuit_breaker=circuit_breaker,
    )


def memory_of(cache: CacheStack) -> MemoryLayer:
    """The stack's L1, to read how long an entry has left to live."""
    layer = cache.layers[0]
    assert isinstance(layer, MemoryLayer)
    return layer


async def clear_prefix(redis_url: str, prefix: str) -> None:
    """Remove what a scenario left under ``prefix`` (a real server outlives the demo)."""
    async with CacheStack([RedisLayer(url=redis_url, prefix=prefix)]) as cache:
        await cache.clear()
