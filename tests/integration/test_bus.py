"""The invalidation bus: stacks keeping each other's L1 consistent (the message codec is
in tests/unit/test_bus.py).

Rules: stacks share a real redis-server on a channel of their own; a test waits for a
peer's message with ``layercache.testing.invalidations_received``, never with sleeps. A message
counted as received is already applied to the local layers: nothing more to wait for.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer
from layercache._bus import MAX_MESSAGE, BusMessage, encode
from layercache._listener import InvalidationListener
from layercache._redis._address import parse_redis_url
from layercache._redis._connection import Connection
from layercache._redis._transport import Transport
from layercache.testing import bus_resubscribed, invalidations_received

SECRET = b"a shared secret of some length"


# -- stacks on one channel ----------------------------------------------------------------


@asynccontextmanager
async def _stacks(
    url: str, count: int, *, secret: bytes | None = None, layer_url: str | None = None
) -> AsyncIterator[tuple[str, list[CacheStack]]]:
    """``count`` stacks of memory + Redis on ``layer_url`` (default: ``url``), with a bus
    on ``url``."""
    prefix = f"bus:{uuid.uuid4().hex[:8]}:"
    channel = f"{prefix}invalidation"
    async with AsyncExitStack() as stack:
        stacks = [
            await stack.enter_async_context(
                CacheStack(
                    [MemoryLayer(), RedisLayer(url=layer_url or url, prefix=prefix)],
                    invalidation_bus=RedisInvalidationBus(url, channel=channel, secret=secret),
                )
            )
            for _ in range(count)
        ]
        yield channel, stacks


def _listener(cache: CacheStack) -> InvalidationListener:
    listener = cache._parts.listener
    assert listener is not None
    return listener


async def _delivered(cache: CacheStack, count: int) -> None:
    with anyio.fail_after(10):
        await invalidations_received(cache, count)


def _in_l1(cache: CacheStack, key: str) -> bool:
    memory = cache.layers[0]
    assert isinstance(memory, MemoryLayer)
    return key in memory.get_many_nowait([key])


@pytest.mark.anyio
async def test_set_delete_and_tags_reach_every_l1(redis_server: Any) -> None:
    async with _stacks(redis_server.url, 3) as (_, (a, b, c)):
        await a.set_many({"k": 1, "gone": 2, "tagged": 3}, tags=["t"])
        for peer in (b, c):
            await _delivered(peer, 1)
            assert await peer.get_many(["k", "gone", "tagged"]) == {"k": 1, "gone": 2, "tagged": 3}
            assert _in_l1(peer, "k")
        await a.set("k", "new")
        for peer in (b, c):
            await _delivered(peer, 2)
            assert not _in_l1(peer, "k")
            assert await peer.get("k") == "new"
        await b.delete("gone")
        for peer in (a, c):
            await _delivered(peer, 1 if peer is a else 3)
            assert not _in_l1(peer, "gone")
        await c.invalidate_by_tag("t")
        for peer in (a, b):
            await _delivered(peer, 2 if peer is a else 3)
            assert not _in_l1(peer, "tagged")
            assert await peer.get("tagged") is None
        stats = a.statistics()
        assert stats.invalidations_sent == 2
        assert stats.invalidations_received == 2
        assert stats.bus_state == "healthy"
        assert _listener(a).ignored == 2  # it heard its own messages and ignored them


@pytest.mark.anyio
async def test_clear_reaches_every_l1(redis_server: Any) -> None:
    async with _stacks(redis_server.url, 2) as (_, (a, b)):
        await b.set_many({"k": 1, "j": 2})
        await _delivered(a, 1)
        assert await a.get_many(["k", "j"]) == {"k": 1, "j": 2}  # now in a's L1 too
        await b.clear()
        await _delivered(a, 2)
        memory = a.layers[0]
        assert isinstance(memory, MemoryLayer)
        assert len(memory) == 0


@pytest.mark.anyio
async def test_signed_bus_drops_forgeries_and_keeps_listening(redis_server: Any) -> None:
    async with _stacks(redis_server.url, 2, secret=SECRET) as (channel, (a, b)):
        await a.set("k", 1)
        await _delivered(b, 1)
        await b.get("k")
        raw = Transport(parse_redis_url(redis_server.url), timeout=5)
        async with anyio.create_task_group() as tg:
            await tg.start(raw.run)
            forged = [
                encode(BusMessage("evil", "clear"), None),  # unsigned
                encode(BusMessage("evil", "clear"), b"guessed secret"),  # forged
                encode(BusMessage("a", "keys", ("k",)), SECRET).replace(b'"k"', b'"x"'),
                b"\x00garbage",
                b"LCI1S" + b"\x00" * MAX_MESSAGE,  # oversized
                b"",
            ]
            await raw.call([("PUBLISH", channel, payload) for payload in forged])
            await a.set("other", 2)  # a genuine message after the garbage
            await _delivered(b, 2)
            tg.cancel_scope.cancel()
        assert _in_l1(b, "k")  # no forged message touched it
        stats = b.statistics()
        assert stats.invalidations_rejected == len(forged)
        assert dict(_listener(b).rejected) == {
            "unsigned": 1,
            "forged": 2,
            "malformed": 2,
            "oversized": 1,
        }


@pytest.mark.anyio
async def test_concurrent_changes_publish_without_crossing(redis_server: Any) -> None:
    async with _stacks(redis_server.url, 2) as (_, (a, b)):
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(a.set, f"k{n}", n)
        await _delivered(b, 50)
        stats = a.statistics()
        assert (stats.invalidations_sent, stats.bus_state) == (50, "healthy")


@pytest.mark.anyio
async def test_resubscription_after_a_redis_restart_clears_l1(own_redis_server: Any) -> None:
    async with _stacks(own_redis_server.url, 2) as (_, (a, b)):
        await a.set("k", 1)
        await _delivered(b, 1)
        await b.get("k")
        assert _in_l1(b, "k")
        own_redis_server.kill()
        own_redis_server.start()
        with anyio.fail_after(20):
            await bus_resubscribed(b, 1)
        assert not _in_l1(b, "k")  # it may have missed an invalidation: L1 starts over


# -- publishing with the change ---------------------------------------------------------


class _Monitor:
    """The commands a server runs, in the order it runs them (MONITOR; a script's own
    commands are listed after its EVALSHA/EVAL)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._arrived = anyio.Event()

    def add(self, lines: list[object]) -> None:
        for line in lines:
            assert isinstance(line, bytes)
            self.names.append(line.decode().split("] ", 1)[1].split(" ", 1)[0].strip('"'))
        self._arrived.set()

    async def until(self, count: int, name: str) -> list[str]:
        """The commands seen once ``count`` of them are ``name`` (the server sends
        MONITOR lines on their own connection, after running them)."""
        with anyio.fail_after(10):
            while self.names.count(name) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return [n for n in self.names if n in ("EVALSHA", "EVAL", "PUBLISH")]


@asynccontextmanager
async def _monitor(url: str) -> AsyncIterator[_Monitor]:
    monitor = _Monitor()
    connection = await Connection.open(parse_redis_url(url))
    try:
        (ok,) = await connection.call([("MONITOR",)])
        assert ok == b"OK"
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                while True:
                    monitor.add(await connection.receive())

            tg.start_soon(read)
            yield monitor
            tg.cancel_scope.cancel()
    finally:
        await connection.aclose()


@pytest.mark.anyio
async def test_a_change_carries_its_publish_in_the_same_batch(redis_server: Any) -> None:
    base = f"redis://{redis_server.host}:{redis_server.port}"
    # The bus on another database: pub/sub ignores it, so the layer still carries.
    async with _stacks(f"{base}/3", 2, layer_url=f"{base}/0") as (_, (a, b)):
        await b.set_many({"k": 0, "d": 0}, tags=["t"])
        await _delivered(a, 1)
        async with _monitor(redis_server.url) as monitor:
            await a.set("k", 1)  # without tags now
            await a.delete("d")
            await a.invalidate_by_tag("t")
            await _delivered(b, 3)
            calls = await monitor.until(3, "PUBLISH")
        assert calls == ["EVALSHA", "PUBLISH"] * 3  # each change, then its message
        assert await b.get_many(["k", "d"]) == {"k": 1}
        stats = a.statistics()
        assert (stats.invalidations_sent, stats.invalidations_carried) == (3, 3)


@pytest.mark.anyio
async def test_a_reloaded_script_publishes_again_after_the_change(redis_server: Any) -> None:
    async with _stacks(redis_server.url, 2) as (_, (a, b)):
        await a.set("k", 0)
        await _delivered(b, 1)
        assert await b.get("k") == 0
        raw = Transport(parse_redis_url(redis_server.url), timeout=5)
        async with anyio.create_task_group() as tg:
            await tg.start(raw.run)
            async with _monitor(redis_server.url) as monitor:
                await raw.call([("SCRIPT", "FLUSH")])
                await a.set("k", 1)  # EVALSHA fails: NOSCRIPT, retried as EVAL
                await _delivered(b, 3)  # heard twice
                calls = await monitor.until(2, "PUBLISH")
            tg.cancel_scope.cancel()
        assert calls == ["EVALSHA", "PUBLISH", "EVAL", "PUBLISH"]
        assert await b.get("k") == 1
        assert a.statistics().invalidations_carried == 2


@pytest.mark.anyio
async def test_a_publish_the_layer_may_not_send_goes_on_the_bus(redis_server: Any) -> None:
    user, password = f"writer{uuid.uuid4().hex[:6]}", "writer-password"
    raw = Transport(parse_redis_url(redis_server.url), timeout=5)
    async with anyio.create_task_group() as tg:
        await tg.start(raw.run)
        (ok,) = await raw.call(
            [("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-publish")]
        )
        assert ok == b"OK"
        try:
            writer_url = f"redis://{user}:{password}@{redis_server.host}:{redis_server.port}"
            async with _stacks(redis_server.url, 2, layer_url=writer_url) as (_, (a, b)):
                await b.set("k", 0)
                await _delivered(a, 1)
                assert await a.get("k") == 0
                await b.set("k", 1)  # the layer's PUBLISH is refused (NOPERM)
                await _delivered(a, 2)
                assert not _in_l1(a, "k")
                assert await a.get("k") == 1
                stats = b.statistics()
                assert (stats.invalidations_sent, stats.invalidations_carried) == (2, 0)
                assert stats.bus_state == "healthy"
        finally:
            await raw.call([("ACL", "DELUSER", user)])
        tg.cancel_scope.cancel()
