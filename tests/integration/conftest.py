"""Integration tests: the library against real servers (a redis-server the fixtures
start on a free loopback port, TLS, unix socket and password variants, the fault proxy
in front of them) and across processes.

When no server binary can be found or started, the fixtures raise, so the tests using
them fail instead of being skipped (DESIGN §6).
"""

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from layercache._redis._address import parse_redis_url
from layercache._redis._transport import Transport
from layercache.testing import FaultProxy, RedisServer

from ..redis_fixtures import own_redis_server as own_redis_server
from ..redis_fixtures import password_redis_server as password_redis_server
from ..redis_fixtures import redis_server as redis_server
from ..redis_fixtures import redis_url as redis_url
from ..redis_fixtures import tls_redis_server as tls_redis_server
from ..redis_fixtures import unix_redis_server as unix_redis_server


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A :class:`~layercache.testing.FaultProxy` in front of the session's server."""
    assert redis_server.port is not None
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        yield proxy


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Transport]:
    """A bare transport to the session's server, to look at and tamper with what a
    layer stored."""
    transport = Transport(parse_redis_url(redis_server.url), timeout=5.0)
    async with anyio.create_task_group() as tasks:
        await tasks.start(transport.run)
        yield transport
        tasks.cancel_scope.cancel()
