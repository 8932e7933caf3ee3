"""``RedisSingleFlightCoordinator`` without a server: the waiters' schedule, and the
checks the coordinator makes of its arguments and its stack (a redis-py client on
fakeredis where one is needed). The protocol across stacks sharing a real redis-server
is in tests/integration/test_distributed.py.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from layercache import CacheStack, MemoryLayer, RedisLayer, RedisSingleFlightCoordinator
from layercache._distributed import POLL_FIRST, POLL_MAX, Wait

from ..helpers import BAD_DURATIONS

pytestmark = pytest.mark.anyio


# -- the protocol's schedule, without a loop -----------------------------------------------


def test_wait_backs_off_with_jitter_up_to_a_ceiling() -> None:
    wait = Wait(0.0, 5.0)
    ceilings: list[float] = []
    for _ in range(12):
        ceiling = min(POLL_FIRST * 2 ** len(ceilings), POLL_MAX)
        pause = wait.pause()
        assert ceiling / 2 <= pause <= ceiling
        ceilings.append(ceiling)
    assert ceilings[-1] == POLL_MAX


def test_wait_starts_over_once_then_gives_up() -> None:
    wait = Wait(100.0, 5.0, lease=2.0)
    assert not wait.given_up(104.9)
    assert not wait.given_up(105.0)  # the first timeout: a fresh wait
    assert wait.renewed
    assert wait.deadline == 110.0
    assert not wait.given_up(109.0)
    assert wait.given_up(110.0)


def test_a_wait_lasts_until_a_dead_holders_lease_has_run_out() -> None:
    wait = Wait(100.0, 5.0, lease=30.0)
    assert not wait.given_up(105.0)  # starts over, and waits out the lease
    assert wait.deadline == 135.0
    assert not wait.given_up(134.9)
    assert wait.given_up(135.0)


# -- configuration -------------------------------------------------------------------------


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="exactly one of url= or client="):
        RedisSingleFlightCoordinator()
    with pytest.raises(TypeError, match="exactly one of url= or client="):
        RedisSingleFlightCoordinator("redis://localhost", client=object())
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lease"):
            RedisSingleFlightCoordinator("redis://localhost", lease=bad)
        with pytest.raises(ValueError, match="wait_timeout"):
            RedisSingleFlightCoordinator("redis://localhost", wait_timeout=bad)
    with pytest.raises(ValueError, match=r"URL|url|scheme"):
        RedisSingleFlightCoordinator("http://localhost")


def test_the_stack_needs_a_redis_layer_and_the_right_type() -> None:
    coordinator = RedisSingleFlightCoordinator("redis://localhost")
    with pytest.raises(ValueError, match="needs a RedisLayer"):
        CacheStack([MemoryLayer()], single_flight_coordinator=coordinator)
    with pytest.raises(TypeError, match="RedisSingleFlightCoordinator"):
        CacheStack([MemoryLayer()], single_flight_coordinator=object())  # type: ignore[arg-type]


async def test_client_coordinator_on_asyncio_only(anyio_backend: str) -> None:
    client = fakeredis.FakeAsyncRedis()
    cache_ = CacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix="c:")],
        single_flight_coordinator=RedisSingleFlightCoordinator(client=client),
    )
    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="url="):
            async with cache_:
                pass
        return
    async with cache_ as cache:

        async def fetch() -> str:
            assert await client.exists("c:l:k") == 1
            return "v"

        assert await cache.get("k", fetch) == "v"
        assert await client.exists("c:l:k") == 0
        assert await client.exists("c:v:k") == 1


@pytest.mark.parametrize(("bad", "error"), BAD_DURATIONS)
@pytest.mark.parametrize("argument", ["lease", "wait_timeout", "timeout"])
def test_durations_are_checked(argument: str, bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=argument):
        RedisSingleFlightCoordinator("redis://localhost", **{argument: bad})
