"""The Redis set-up shared by the layer, the bus and the coordinator, on asyncio and trio:
a server that refuses the login fails each one's start with a plain
``LayerUnavailableError`` naming it (not an exception group), caused by the refusal.
"""

from __future__ import annotations

from typing import Any

import pytest

from layercache import (
    CacheStack,
    LayerUnavailableError,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache._redis._endpoint import RedisEndpoint
from layercache._redis._errors import RedisConfigurationError

pytestmark = pytest.mark.anyio


def _wrong_login(server: Any) -> str:
    url: str = server.url.replace(server.password, "wrong")
    return url


async def test_a_refused_login_fails_the_endpoints_start(password_redis_server: Any) -> None:
    endpoint = RedisEndpoint(
        "RedisLayer", _wrong_login(password_redis_server), None, timeout=1.0, ssl_context=None
    )
    with pytest.raises(LayerUnavailableError, match="authentication failed") as caught:
        async with endpoint.transport("mine"):
            pytest.fail("a refused transport runs no block")
    assert caught.value.layer == "mine"
    assert isinstance(caught.value.__cause__, RedisConfigurationError)


async def test_a_refused_login_fails_the_buss_start(password_redis_server: Any) -> None:
    bus = RedisInvalidationBus(_wrong_login(password_redis_server))
    with pytest.raises(LayerUnavailableError, match="authentication failed") as caught:
        async with CacheStack([MemoryLayer()], invalidation_bus=bus):
            pass
    assert caught.value.layer == "invalidation bus"


async def test_a_refused_login_fails_the_coordinators_start(
    password_redis_server: Any, prefix: str
) -> None:
    coordinator = RedisSingleFlightCoordinator(_wrong_login(password_redis_server))
    layers = [MemoryLayer(), RedisLayer(url=password_redis_server.url, prefix=prefix)]
    with pytest.raises(LayerUnavailableError, match="authentication failed") as caught:
        async with CacheStack(layers, single_flight_coordinator=coordinator):
            pass
    assert caught.value.layer == "single-flight coordinator"
