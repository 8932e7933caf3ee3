"""Bad input fails early with TypeError (wrong type) or ValueError (wrong value)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from layercache import (
    CacheStack,
    CircuitBreaker,
    GracefulDegradation,
    MemoryLayer,
)
from layercache._validation import MAX_TTL, check_duration, check_ttl

from ..helpers import BAD_DURATIONS

pytestmark = pytest.mark.anyio

BAD_KEYS: list[tuple[Any, type[Exception]]] = [
    (42, TypeError),
    (b"bytes", TypeError),
    (None, TypeError),
    (("tuple",), TypeError),
    ("", ValueError),
    ("k" * 1025, ValueError),
]
BAD_TTLS: list[tuple[Any, type[Exception]]] = [
    (0, ValueError),
    (-1, ValueError),
    (math.inf, ValueError),
    (math.nan, ValueError),
    (MAX_TTL * 10, ValueError),  # longer than any entry should live
    (10**400, ValueError),  # too large for a float
    ("60", TypeError),
    (True, TypeError),
]
BAD_TAGS: list[tuple[Any, type[Exception]]] = [
    ("author:7", TypeError),  # a bare str would be read as one tag per character
    ([""], ValueError),
    ([7], TypeError),
    (["t" * 1025], ValueError),
    (5, TypeError),
]


@pytest.mark.parametrize(("key", "error"), BAD_KEYS)
async def test_bad_keys_are_rejected_by_every_method(key: Any, error: type[Exception]) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(error):
            await cache.get(key)
        with pytest.raises(error):
            await cache.get(key, _fetch_one)
        with pytest.raises(error):
            await cache.set(key, 1)
        with pytest.raises(error):
            await cache.delete(key)
        with pytest.raises(error):
            await cache.get_many([key])
        with pytest.raises(error):
            await cache.set_many({key: 1})
        with pytest.raises(error):
            await cache.delete_many([key])


async def test_longest_key_is_accepted() -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        await cache.set("k" * 1024, 1)
        assert await cache.get("k" * 1024) == 1


@pytest.mark.parametrize(("ttl", "error"), BAD_TTLS)
async def test_bad_ttls_are_rejected(ttl: Any, error: type[Exception]) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(error):
            await cache.set("k", 1, ttl=ttl)
        with pytest.raises(error):
            await cache.set_many({"k": 1}, ttl=ttl)
        with pytest.raises(error):
            await cache.get("k", _fetch_one, ttl=ttl)
        await cache.set("k", 1)
        with pytest.raises(error):  # rejected even when the key is a hit
            await cache.get("k", ttl=ttl)
    with pytest.raises(error):
        MemoryLayer(ttl=ttl)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"tags": "t"}, TypeError),
        ({"tags": [""]}, ValueError),
    ],
)
async def test_set_and_set_many_check_in_the_same_order(
    arguments: dict[str, Any], error: type[Exception]
) -> None:
    """With a bad key as well, both report the TTL or tags first."""
    key: Any = 1
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(error):
            await cache.set(key, 1, **arguments)
        with pytest.raises(error):
            await cache.set_many({key: 1}, **arguments)


@pytest.mark.parametrize(("tags", "error"), BAD_TAGS)
async def test_bad_tags_are_rejected(tags: Any, error: type[Exception]) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(error):
            await cache.set("k", 1, tags=tags)
        with pytest.raises(error):
            await cache.get("k", _fetch_one, tags=tags)
    nothing_written = CacheStack([MemoryLayer()])
    async with nothing_written as cache:
        with pytest.raises(error):
            await cache.set("k", 1, tags=tags)
        assert await cache.get("k", default="absent") == "absent"


@pytest.mark.parametrize("tag", ["", 7, None])
async def test_bad_tag_for_invalidation(tag: Any) -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises((TypeError, ValueError)):
            await cache.invalidate_by_tag(tag)


async def test_keys_must_be_an_iterable_not_a_str() -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(TypeError):
            await cache.get_many("abc")
        with pytest.raises(TypeError):
            await cache.delete_many("abc")
        with pytest.raises(TypeError):
            await cache.set_many([("k", 1)])  # type: ignore[arg-type]


async def test_fetcher_must_be_callable() -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(TypeError):
            await cache.get("k", 42)  # type: ignore[arg-type]
        await cache.set("k", 1)
        with pytest.raises(TypeError):  # even on a hit
            await cache.get("k", 42)  # type: ignore[arg-type]


async def test_fetcher_that_returns_no_awaitable_raises_type_error() -> None:
    def not_async() -> int:
        return 1

    async with CacheStack([MemoryLayer()]) as cache:
        with pytest.raises(TypeError, match="awaitable"):
            await cache.get("k", not_async)  # type: ignore[arg-type]
        assert await cache.get("k", default="absent") == "absent"
        assert cache.statistics().fetch_errors == 1


def test_stack_configuration_errors() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        CacheStack([])
    with pytest.raises(ValueError, match="unique"):
        CacheStack([MemoryLayer(), MemoryLayer()])
    with pytest.raises(TypeError):
        CacheStack(MemoryLayer())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CacheStack([object()])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        CacheStack([MemoryLayer()], graceful_degradation=10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CacheStack([MemoryLayer()], circuit_breaker=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"max_size": 0}, {"max_size": -5}, {"name": ""}, {"sweep_interval": 0}]
)
def test_memory_layer_value_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        MemoryLayer(**kwargs)


@pytest.mark.parametrize("kwargs", [{"max_size": 1.5}, {"max_size": "10"}, {"max_size": True}])
def test_memory_layer_type_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        MemoryLayer(**kwargs)


@pytest.mark.parametrize(("bad", "error"), BAD_DURATIONS)
def test_every_duration_is_checked_alike(bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="lease"):
        check_duration(bad, "lease")
    with pytest.raises(error, match="retry_after"):
        GracefulDegradation(retry_after=bad)
    with pytest.raises(error, match="reset_after"):
        CircuitBreaker(reset_after=bad)


def test_durations_come_back_as_floats() -> None:
    assert check_duration(2, "timeout") == 2.0
    assert type(check_duration(2, "timeout")) is float
    assert check_duration(MAX_TTL, "lease") == MAX_TTL
    assert check_ttl(None) is None
    assert check_ttl(5) == 5.0


def test_option_objects_validate() -> None:
    assert GracefulDegradation().retry_after == 10.0
    assert CircuitBreaker() == CircuitBreaker(threshold=5, reset_after=30.0)
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="retry_after must be a positive finite"):
            GracefulDegradation(retry_after=bad)
        with pytest.raises(ValueError, match="reset_after must be a positive finite"):
            CircuitBreaker(reset_after=bad)
    with pytest.raises(TypeError):
        GracefulDegradation(retry_after="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(threshold=0)
    with pytest.raises(TypeError):
        CircuitBreaker(threshold=2.5)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        GracefulDegradation().retry_after = 1.0  # type: ignore[misc]


async def _fetch_one() -> int:
    return 1
