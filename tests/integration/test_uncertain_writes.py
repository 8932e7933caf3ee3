"""A change whose outcome is unknown leaves no stale memory behind (DESIGN §2), and a
black-holed Redis slows a change by at most the layer's timeout, announcement included.

The writer's Redis layer talks through a :class:`~layercache.testing.FaultProxy`; its
peer talks to Redis directly, and so does the writer's bus unless a test says otherwise.
Waiting is on bus deliveries (``layercache.testing.invalidations_received``), never on
sleeps; every test body is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from layercache import (
    CacheStack,
    GracefulDegradation,
    LayerUnavailableError,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
)
from layercache.testing import FaultProxy, RedisServer, invalidations_received

pytestmark = pytest.mark.anyio

BOUND = 30.0
TIMEOUT = 0.2
"""The writer's Redis layer timeout; the proxy delays replies well past it."""

OPERATIONS = ["set", "set_many", "delete", "tag", "expire", "expire_by_tag"]
MODES = ["strict", "graceful"]


@asynccontextmanager
async def _writer_and_peer(
    redis_server: RedisServer, proxy: FaultProxy, prefix: str, mode: str, bus_url: str
) -> AsyncIterator[tuple[CacheStack, CacheStack]]:
    channel = f"{prefix}bus"
    writer = CacheStack(
        [MemoryLayer(), RedisLayer(url=proxy.url, prefix=prefix, timeout=TIMEOUT)],
        invalidation_bus=RedisInvalidationBus(bus_url, channel=channel),
        graceful_degradation=GracefulDegradation(retry_after=60) if mode == "graceful" else None,
    )
    peer = CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=prefix)],
        invalidation_bus=RedisInvalidationBus(redis_server.url, channel=channel),
    )
    async with writer as w, peer as p:
        yield w, p


async def _change(cache: CacheStack, operation: str) -> None:
    if operation == "set":
        await cache.set("price", 120, tags=["prices"])
    elif operation == "set_many":
        await cache.set_many({"price": 120, "other": 1}, tags=["prices"])
    elif operation == "delete":
        await cache.delete("price")
    elif operation == "expire":
        await cache.expire("price")  # no stale window: a delete where it is certain
    elif operation == "expire_by_tag":
        await cache.expire_by_tag("prices")
    else:
        await cache.invalidate_by_tag("prices")


async def _both_hold_the_old_price(writer: CacheStack, peer: CacheStack) -> int:
    """The writer sets the price and the peer reads it: both memories hold 100. Returns
    how many bus messages the peer has applied so far."""
    await writer.set("price", 100, tags=["prices"])
    await invalidations_received(peer, 1)
    assert await peer.get("price") == 100
    return peer.statistics().invalidations_received


def _in_memory(cache: CacheStack, key: str) -> bool:
    memory = cache.layers[0]
    assert isinstance(memory, MemoryLayer)
    return key in memory.get_many_nowait([key])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_change_that_timed_out_drops_the_key_here_and_on_the_peers(
    redis_server: RedisServer, proxy: FaultProxy, prefix: str, mode: str, operation: str
) -> None:
    with anyio.fail_after(BOUND):
        async with _writer_and_peer(redis_server, proxy, prefix, mode, redis_server.url) as (
            writer,
            peer,
        ):
            heard = await _both_hold_the_old_price(writer, peer)
            assert _in_memory(writer, "price")
            assert _in_memory(peer, "price")
            proxy.delay(0.5)  # the change reaches Redis, its reply comes too late
            if mode == "strict":
                with pytest.raises(LayerUnavailableError):
                    await _change(writer, operation)
            else:
                await _change(writer, operation)
            assert not _in_memory(writer, "price")  # not the old 100, not an unknown 120
            await invalidations_received(peer, heard + 1)
            assert not _in_memory(peer, "price")
            proxy.pass_through()


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_black_holed_redis_keeps_the_announcement_for_later_instead_of_waiting(
    redis_server: RedisServer, proxy: FaultProxy, prefix: str, operation: str
) -> None:
    # The writer's bus is behind the proxy too: its own timeout (1 s) is far longer
    # than the layer's, and the call must not wait for it.
    with anyio.fail_after(BOUND):
        async with _writer_and_peer(redis_server, proxy, prefix, "strict", proxy.url) as (
            writer,
            peer,
        ):
            heard = await _both_hold_the_old_price(writer, peer)
            proxy.black_hole()
            with pytest.raises(LayerUnavailableError):
                await _change(writer, operation)
            stats = writer.statistics()
            assert stats.invalidations_deferred >= 1  # kept: the call's time was up
            assert stats.bus_errors == 0  # the bus was not waited on within the call
            assert not _in_memory(writer, "price")
            proxy.pass_through()
            await invalidations_received(peer, heard + 1)  # published once Redis took it
            assert not _in_memory(peer, "price")


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_a_change_the_caller_gave_up_on_drops_the_key_here_and_on_the_peers(
    redis_server: RedisServer, proxy: FaultProxy, prefix: str, operation: str
) -> None:
    # The layer would wait up to its timeout; the caller's own deadline comes first
    # (a cancelled web request, say): the change may still reach Redis.
    with anyio.fail_after(BOUND):
        async with _writer_and_peer(redis_server, proxy, prefix, "strict", redis_server.url) as (
            writer,
            peer,
        ):
            heard = await _both_hold_the_old_price(writer, peer)
            proxy.delay(0.5)
            with anyio.move_on_after(0.05) as gave_up:
                await _change(writer, operation)
            assert gave_up.cancelled_caught
            assert not _in_memory(writer, "price")
            await invalidations_received(peer, heard + 1)
            assert not _in_memory(peer, "price")
            proxy.pass_through()


async def test_a_slow_bus_on_a_healthy_server_does_not_fail_the_change(
    redis_server: RedisServer, proxy: FaultProxy, prefix: str
) -> None:
    # The layer answers within its timeout, but the bus's round trip is longer than
    # what is left of the call's deadline: the publish still has the bus's own timeout,
    # so nothing fails, nothing counts as failed and the peer hears of it.
    assert redis_server.port is not None
    with anyio.fail_after(BOUND), FaultProxy("127.0.0.1", redis_server.port) as slow_bus:
        async with _writer_and_peer(redis_server, proxy, prefix, "strict", slow_bus.url) as (
            writer,
            peer,
        ):
            await writer.set("price", 100)
            await invalidations_received(peer, 1)
            assert await peer.get("price") == 100
            heard = peer.statistics().invalidations_received
            slow_bus.delay(0.3)  # a round trip of 0.6 s: more than the layer's 0.2 s
            await writer.set("price", 120)
            stats = writer.statistics()
            assert (stats.bus_errors, stats.bus_state) == (0, "healthy")
            assert await writer.get("price") == 120
            await invalidations_received(peer, heard + 1)
            assert await peer.get("price") == 120
