"""The Redis set-up shared by the layer, the bus and the coordinator: each of the three
names itself in the errors of its arguments, and Redis errors become its own
``LayerUnavailableError``. (A refused login, against a real server: tests/integration.)
"""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from layercache import (
    LayerUnavailableError,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)
from layercache._redis._endpoint import RedisEndpoint, check_replies, unavailable
from layercache._redis._errors import (
    RedisConnectionError,
    RedisReplyError,
)

OWNERS: list[Any] = [RedisLayer, RedisInvalidationBus, RedisSingleFlightCoordinator]


@pytest.mark.parametrize("owner", OWNERS, ids=lambda owner: owner.__name__)
def test_each_owner_needs_exactly_one_of_url_and_client(owner: Any) -> None:
    message = f"{owner.__name__} needs exactly one of url= or client="
    with pytest.raises(TypeError, match=message):
        owner()
    with pytest.raises(TypeError, match=message):
        owner(url="redis://localhost", client=object())


def test_the_endpoint_shows_where_without_the_password() -> None:
    endpoint = RedisEndpoint(
        "RedisLayer", "redis://:secret@db:6380/2", None, timeout=2, ssl_context=None
    )
    assert endpoint.timeout == 2.0
    assert endpoint.display() == "redis://:***@db:6380/2"
    assert "secret" not in repr(endpoint)
    client = object()
    by_client = RedisEndpoint("RedisLayer", None, client, timeout=1.0, ssl_context=None)
    assert by_client.address is None
    assert by_client.display() == repr(client)
    assert "secret" not in repr(RedisLayer(url="redis://:secret@db"))


def test_redis_errors_become_the_owners_unavailable_error() -> None:
    error = unavailable("redis", RedisConnectionError("connection refused"))
    assert error.layer == "redis"
    assert "connection refused" in str(error)
    replies: list[object] = [b"OK", 1]
    assert check_replies("bus", replies) is replies
    with pytest.raises(LayerUnavailableError, match="Redis answered: OOM") as caught:
        check_replies("bus", [b"OK", hiredis.ReplyError("OOM no room"), 1])
    assert caught.value.layer == "bus"
    assert isinstance(caught.value.__cause__, RedisReplyError)
