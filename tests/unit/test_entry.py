"""What a stack that cannot work says at ``async with``, on asyncio and trio.

The bus and the coordinator fail their start with the same exception types as a layer
(``LayerUnavailableError``, or on trio with ``client=`` a ``TypeError`` pointing to
``url=``), never an exception group. A server without Lua scripting (fakeredis without
its ``lua`` extra, simulated by taking its scripting commands away) fails the start of
the parts that run scripts, saying what to install. Connection failures say what came
back: a ``rediss://`` URL on a plain port hints at TLS, a peer that is not Redis shows
its first bytes. (Refused logins and databases, against real servers: tests/integration.)

Peers are in-process: the embedded fakeredis server, or listeners of the test's own.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import fakeredis
import pytest
from anyio.abc import SocketStream
from fakeredis import _commands

from layercache import (
    CacheStack,
    GracefulDegradation,
    LayerUnavailableError,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache.testing import EmbeddedRedis

pytestmark = pytest.mark.anyio

MODES = {"strict": None, "graceful": GracefulDegradation(retry_after=10.0)}
NAMES = {"layer": "redis", "bus": "invalidation bus", "coordinator": "single-flight coordinator"}


def _stack(part: str, where: dict[str, Any], mode: str, good: str | None = None) -> CacheStack:
    """A stack whose ``part`` connects with ``where`` (``url=`` or ``client=``)."""
    graceful = MODES[mode]
    if part == "layer":
        return CacheStack([MemoryLayer(), RedisLayer(**where)], graceful_degradation=graceful)
    if part == "bus":
        bus = RedisInvalidationBus(**where)
        return CacheStack([MemoryLayer()], invalidation_bus=bus, graceful_degradation=graceful)
    layer = RedisLayer(url=good or _closed_port_url(), timeout=0.2)
    coordinator = RedisSingleFlightCoordinator(**where)
    return CacheStack(
        [MemoryLayer(), layer], single_flight_coordinator=coordinator, graceful_degradation=graceful
    )


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def _start(stack: CacheStack) -> None:
    async with stack:
        pytest.fail("this stack must not start")


# -- the bus and the coordinator fail as a layer does -----------------------------------


async def test_a_strict_bus_that_cannot_subscribe_raises_the_layers_error() -> None:
    bus = RedisInvalidationBus(_closed_port_url(), timeout=0.2)
    with pytest.raises(LayerUnavailableError, match="cannot connect") as caught:
        await _start(CacheStack([MemoryLayer()], invalidation_bus=bus))
    assert caught.value.layer == "invalidation bus"


CLIENTS: dict[str, Callable[[], Any]] = {
    "no client": object,
    "synchronous": fakeredis.FakeRedis,
    "decoding": lambda: fakeredis.FakeAsyncRedis(decode_responses=True),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("part", NAMES)
async def test_a_client_that_cannot_serve_fails_every_part_alike(
    anyio_backend: str, part: str, client: str, mode: str
) -> None:
    stack = _stack(part, {"client": CLIENTS[client]()}, mode)
    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="url="):
            await _start(stack)
        return
    with pytest.raises(LayerUnavailableError, match="client") as caught:
        await _start(stack)
    assert caught.value.layer == NAMES[part]


# -- a server that cannot run scripts ------------------------------------------------------


@pytest.fixture
def without_lua(monkeypatch: pytest.MonkeyPatch) -> None:
    """fakeredis as installed without its ``lua`` extra: no scripting commands."""
    for name in list(_commands.SUPPORTED_COMMANDS):
        if name.split()[0] in ("eval", "evalsha", "script"):
            monkeypatch.delitem(_commands.SUPPORTED_COMMANDS, name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("part", ["layer", "coordinator"])
async def test_a_server_without_lua_fails_the_start(
    without_lua: None, embedded_redis: EmbeddedRedis, part: str, mode: str
) -> None:
    stack = _stack(part, {"url": embedded_redis.url}, mode)
    with pytest.raises(LayerUnavailableError, match=r"pip install 'fakeredis\[lua\]'") as caught:
        await _start(stack)
    assert caught.value.layer == NAMES[part]
    assert "unknown command" in str(caught.value)


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_lua_fails_the_start(
    without_lua: None, anyio_backend: str, mode: str
) -> None:
    stack = _stack("layer", {"client": fakeredis.FakeAsyncRedis()}, mode)
    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="url="):
            await _start(stack)
        return
    with pytest.raises(LayerUnavailableError, match=r"pip install 'fakeredis\[lua\]'"):
        await _start(stack)


async def test_a_bus_needs_no_lua(without_lua: None, embedded_redis: EmbeddedRedis) -> None:
    bus = RedisInvalidationBus(embedded_redis.url)
    async with CacheStack([MemoryLayer()], invalidation_bus=bus) as cache:
        await cache.set("k", 1)
        assert cache.statistics().invalidations_sent == 1


# -- what a failed connection says -------------------------------------------------------


@asynccontextmanager
async def _peer(handle: Callable[[SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """A loopback listener of the test's own, handling each connection with ``handle``."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, handle)
            yield port
            tasks.cancel_scope.cancel()


async def _silent(stream: SocketStream) -> None:
    async with stream:
        await anyio.sleep_forever()


async def _http(stream: SocketStream) -> None:
    async with stream:
        await stream.receive()
        await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nno\r\n")
        await anyio.sleep_forever()


async def test_rediss_on_a_silent_plain_port_hints_at_tls() -> None:
    async with _peer(_silent) as port:
        layer = RedisLayer(url=f"rediss://127.0.0.1:{port}/0", timeout=0.2)
        async with CacheStack([layer]) as cache:
            with pytest.raises(LayerUnavailableError, match=r"timed out.*is this port a TLS port"):
                await cache.get("k")


async def test_rediss_on_a_redis_plain_port_hints_at_tls(embedded_redis: EmbeddedRedis) -> None:
    layer = RedisLayer(url=f"rediss://127.0.0.1:{embedded_redis.port}/0", timeout=1.0)
    async with CacheStack([layer]) as cache:
        with pytest.raises(LayerUnavailableError, match=r"SSL.*is this port a TLS port"):
            await cache.get("k")


async def test_a_peer_that_is_not_redis_shows_what_it_sent() -> None:
    async with _peer(_http) as port:
        layer = RedisLayer(url=f"redis://127.0.0.1:{port}/0", timeout=1.0)
        async with CacheStack([layer]) as cache:
            with pytest.raises(LayerUnavailableError) as caught:
                await cache.get("k")
    message = str(caught.value)
    assert "protocol error" in message
    # The first 40 bytes, escaped, and a mark that there was more.
    assert r"received b'HTTP/1.1 400 Bad Request\r\nContent-Type: '…" in message
