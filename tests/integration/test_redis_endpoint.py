"""The Redis set-up shared by the layer, the bus and the coordinator, on asyncio and trio:
a server that refuses the login (a missing or wrong password), the database or the
scripts fails each one's start with a plain ``LayerUnavailableError`` naming it (not an
exception group), caused by the refusal, in strict and graceful mode; a refusal later
(an ACL or password change) makes the part ``misconfigured`` in the statistics and the
logs, not a flapping one.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio

from layercache import (
    CacheStack,
    GracefulDegradation,
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


# -- misconfiguration fails at entry, in strict and graceful mode alike -----------------

MODES = {"strict": None, "graceful": GracefulDegradation(retry_after=10.0)}


def _misconfigured(server: Any, cause: str) -> tuple[str, str]:
    """A URL for ``server`` that is wrong in one way, and what the error must say."""
    address = f"127.0.0.1:{server.port}"
    if cause == "missing password":
        return f"redis://{address}/0", "NOAUTH"
    if cause == "wrong password":
        return f"redis://:wrong@{address}/0", "WRONGPASS"
    return f"{server.url}/4096", "DB index is out of range"


def _stack(part: str, url: str, good: str, prefix: str, mode: str) -> CacheStack:
    """A stack where only ``part`` uses ``url``; the rest uses the ``good`` URL."""
    graceful = MODES[mode]
    if part == "layer":
        layers = [MemoryLayer(), RedisLayer(url=url, prefix=prefix)]
        return CacheStack(layers, graceful_degradation=graceful)
    layers = [MemoryLayer(), RedisLayer(url=good, prefix=prefix)]
    if part == "bus":
        bus = RedisInvalidationBus(url)
        return CacheStack(layers, invalidation_bus=bus, graceful_degradation=graceful)
    coordinator = RedisSingleFlightCoordinator(url)
    return CacheStack(layers, single_flight_coordinator=coordinator, graceful_degradation=graceful)


NAMES = {"layer": "redis", "bus": "invalidation bus", "coordinator": "single-flight coordinator"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("part", NAMES)
@pytest.mark.parametrize("cause", ["missing password", "wrong password", "bad database"])
async def test_misconfiguration_fails_the_start_of_every_part(
    password_redis_server: Any, prefix: str, cause: str, part: str, mode: str
) -> None:
    url, says = _misconfigured(password_redis_server, cause)
    stack = _stack(part, url, password_redis_server.url, prefix, mode)
    with pytest.raises(LayerUnavailableError, match=says) as caught:
        async with stack:
            pytest.fail("a misconfigured stack runs no block")
    assert caught.value.layer == NAMES[part]
    assert isinstance(caught.value.__cause__, RedisConfigurationError)


async def test_a_missing_password_says_where_to_put_it(password_redis_server: Any) -> None:
    url, _ = _misconfigured(password_redis_server, "missing password")
    with pytest.raises(LayerUnavailableError, match=r"authentication required on .*password"):
        async with CacheStack([RedisLayer(url=url)]):
            pass


# -- at runtime, a refusal is a configuration error, not a flapping layer --------------


def _admin(server: Any) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@pytest.mark.parametrize("mode", MODES)
async def test_an_acl_change_at_runtime_reads_as_misconfigured(
    own_redis_server: Any, prefix: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = _admin(own_redis_server)
    admin.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
                      commands=["+@all"])  # fmt: skip
    url = f"redis://app:secret@127.0.0.1:{own_redis_server.port}/0"
    layer = RedisLayer(url=url, prefix=prefix)
    async with CacheStack([MemoryLayer(), layer], graceful_degradation=MODES[mode]) as cache:
        await cache.set("k", 1)
        admin.acl_setuser("app", commands=["-@all"])  # existing connections are refused now
        if mode == "strict":
            with pytest.raises(LayerUnavailableError, match="NOPERM") as caught:
                await cache.set("k", 2)
            assert isinstance(caught.value.__cause__, RedisConfigurationError)
        else:
            await cache.set("k", 2)  # skipped, and counted as dropped
        stats = cache.statistics().layers[1]
        assert stats.state == "misconfigured"
        assert stats.configuration_errors == 1
        assert any(
            record.levelno == logging.ERROR and "misconfigured" in record.getMessage()
            for record in caplog.records
        )
        admin.acl_setuser("app", commands=["+@all"])
        if mode == "strict":
            await cache.set("k", 3)
            assert cache.statistics().layers[1].state == "healthy"


async def test_a_reconnect_refused_at_runtime_reads_as_misconfigured(
    own_redis_server: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The password changed and the connection dropped: the reconnects are refused, the
    error is logged once as a configuration error, and requests fail with it."""
    admin = _admin(own_redis_server)
    admin.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
                      commands=["+@all"])  # fmt: skip
    url = f"redis://app:secret@127.0.0.1:{own_redis_server.port}/0"
    refused = anyio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.ERROR and "configuration error" in record.getMessage():
                refused.set()

    watch = Watch()
    logging.getLogger("layercache.redis.transport").addHandler(watch)
    try:
        async with CacheStack([MemoryLayer(), RedisLayer(url=url, prefix=prefix)]) as cache:
            await cache.set("k", 1)
            admin.acl_setuser("app", reset_passwords=True, passwords=["+changed"])
            admin.client_kill_filter(user="app")
            with anyio.fail_after(10):
                await refused.wait()
            with pytest.raises(LayerUnavailableError, match="WRONGPASS") as caught:
                await cache.set("k", 2)
            assert isinstance(caught.value.__cause__, RedisConfigurationError)
            stats = cache.statistics().layers[1]
            assert (stats.state, stats.configuration_errors) == ("misconfigured", 1)
    finally:
        logging.getLogger("layercache.redis.transport").removeHandler(watch)


# -- a server that cannot run the scripts ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("part", ["layer", "coordinator"])
async def test_a_user_without_scripting_fails_the_start(
    own_redis_server: Any, prefix: str, part: str, mode: str
) -> None:
    admin = _admin(own_redis_server)
    admin.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
                      commands=["+@all", "-@scripting"])  # fmt: skip
    url = f"redis://app:secret@127.0.0.1:{own_redis_server.port}/0"
    stack = _stack(part, url, own_redis_server.url, prefix, mode)
    with pytest.raises(LayerUnavailableError, match="cannot run the Lua scripts") as caught:
        async with stack:
            pass
    assert caught.value.layer == NAMES[part]
    assert "NOPERM" in str(caught.value)


# -- client=: the same checks through a redis.asyncio client -----------------------------


@pytest.mark.parametrize("part", NAMES)
@pytest.mark.parametrize("cause", ["missing password", "wrong password", "bad database"])
async def test_a_misconfigured_client_fails_the_start(
    password_redis_server: Any, prefix: str, cause: str, part: str, anyio_backend: str
) -> None:
    """On trio a client= is refused first, by every part alike: a plain TypeError that
    points to url= (redis.asyncio runs on asyncio only)."""
    url, _ = _misconfigured(password_redis_server, cause)
    client = redis.asyncio.Redis.from_url(url)
    good = password_redis_server.url
    if part == "layer":
        stack = CacheStack([RedisLayer(client=client, prefix=prefix)])
    elif part == "bus":
        stack = CacheStack([MemoryLayer()], invalidation_bus=RedisInvalidationBus(client=client))
    else:
        stack = CacheStack(
            [RedisLayer(url=good, prefix=prefix)],
            single_flight_coordinator=RedisSingleFlightCoordinator(client=client),
        )
    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="url="):
            async with stack:
                pass
        return
    try:
        with pytest.raises(LayerUnavailableError) as caught:
            async with stack:
                pass
    finally:
        await client.aclose()
    assert caught.value.layer == NAMES[part]
    assert isinstance(caught.value.__cause__, RedisConfigurationError)
