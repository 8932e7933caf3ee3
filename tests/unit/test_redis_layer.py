"""The Redis layer without a real server, on asyncio and trio: its URL checks, the
embedded (fakeredis) server, and peers that refuse connections or never read. The layer
against a real redis-server is in tests/integration/test_redis_layer.py.

Rules: waiting is on events or on the layer's own answers, never on sleeps; no timing
assertions.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from layercache import (
    CacheStack,
    GracefulDegradation,
    LayerUnavailableError,
    MemoryLayer,
    RedisLayer,
)
from layercache._redis._address import parse_redis_url
from layercache._redis._errors import RedisConnectionError
from layercache._redis._transport import Transport

from ..helpers import BAD_DURATIONS

pytestmark = pytest.mark.anyio


async def test_bad_urls_fail_at_construction() -> None:
    for url in ("http://localhost", "redis://", "redis://host:notaport", "redis://h/x", "unix://"):
        with pytest.raises(ValueError, match="Redis URL"):
            RedisLayer(url=url)
    with pytest.raises(TypeError, match="exactly one"):
        RedisLayer()
    with pytest.raises(TypeError, match="exactly one"):
        RedisLayer(url="redis://localhost", client=object())
    with pytest.raises(ValueError, match="timeout"):
        RedisLayer(url="redis://localhost", timeout=0)


async def test_embedded_server_serves_the_layer(embedded_redis: Any, prefix: str) -> None:
    async with CacheStack([MemoryLayer(), RedisLayer(url=embedded_redis.url, prefix=prefix)]) as a:
        await a.set("k", [1, 2], tags=["t"])
        assert await a.get("k") == [1, 2]
    async with CacheStack([RedisLayer(url=embedded_redis.url, prefix=prefix)]) as b:
        assert await b.get("k") == [1, 2]
        assert await b.invalidate_by_tag("t") == 1
        await b.clear()


async def test_unreachable_server_starts_and_raises_per_call(prefix: str) -> None:
    with anyio.fail_after(30):
        port = _free_port()
        layer = RedisLayer(url=f"redis://127.0.0.1:{port}", prefix=prefix, timeout=0.5)
        async with CacheStack([MemoryLayer(), layer]) as cache:
            assert layer.statistics().state == "disconnected"
            with pytest.raises(LayerUnavailableError, match="not connected"):
                await cache.set("k", 1)
            assert await cache.get_many([]) == {}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_writer_stuck_on_a_dead_connection_holds_up_nobody(
    anyio_backend: str,
) -> None:
    """A peer that never reads: a huge write blocks half-way. When an earlier request's
    deadline drops the connection, the stuck write ends with it, and the request that
    waited for its turn is answered at once instead of at the huge write's deadline."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        url = f"redis://127.0.0.1:{server.getsockname()[1]}"
        transport = Transport(parse_redis_url(url), timeout=0.3)
        answers: dict[str, object] = {}

        def answer(name: str) -> Callable[[object], None]:
            def deliver(replies: object) -> None:
                answers[name] = replies

            return deliver

        with anyio.fail_after(10):  # the huge write's own deadline is 60 s
            async with anyio.create_task_group() as tasks:
                await tasks.start(transport.run)
                await transport.send([("PING",)], answer("ping"))  # due in 0.3 s

                async def huge() -> None:
                    deadline = anyio.current_time() + 60
                    await transport.send(
                        [("SET", "x", b"x" * 50_000_000)], answer("huge"), deadline
                    )

                tasks.start_soon(huge)
                await anyio.wait_all_tasks_blocked()  # the huge write waits for room
                await transport.send([("PING",)], answer("next"))
                tasks.cancel_scope.cancel()
        for name in ("ping", "huge", "next"):
            assert isinstance(answers[name], RedisConnectionError), name


@pytest.mark.parametrize("graceful", [False, True])
async def test_gets_that_fail_at_once_still_let_other_tasks_run(graceful: bool) -> None:
    """With Redis unreachable a get fails (or, graceful, misses) without any I/O; a
    caller retrying in a loop must still yield, or the transport could never reconnect."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    layer = RedisLayer(url=f"redis://127.0.0.1:{port}", timeout=0.5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    degradation = GracefulDegradation(retry_after=60) if graceful else None
    stack = CacheStack([layer], graceful_degradation=degradation)
    async with anyio.create_task_group() as tasks, stack as cache:
        tasks.start_soon(tick)
        before = ticks
        for _ in range(20):
            if graceful:
                assert await cache.get("k", default="missed") == "missed"
            else:
                with pytest.raises(LayerUnavailableError):
                    await cache.get("k")
        assert ticks > before
        tasks.cancel_scope.cancel()


@pytest.mark.parametrize(("bad", "error"), BAD_DURATIONS)
def test_timeout_is_checked(bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        RedisLayer(url="redis://localhost", timeout=bad)
