"""Shared fixtures. Every async test runs once on asyncio and once on trio.

The Redis fixtures (tests/redis_fixtures.py) start real servers on free loopback ports;
when no server binary can be found or started they raise, so the tests using them fail
instead of being skipped.
"""

from __future__ import annotations

import uuid

import pytest

from layercache.testing import FakeClock

from .redis_fixtures import embedded_redis as embedded_redis
from .redis_fixtures import own_redis_server as own_redis_server
from .redis_fixtures import password_redis_server as password_redis_server
from .redis_fixtures import redis_server as redis_server
from .redis_fixtures import redis_url as redis_url
from .redis_fixtures import tls_redis_server as tls_redis_server
from .redis_fixtures import unix_redis_server as unix_redis_server


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A Redis key prefix no other test uses (tests share one server per session)."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return f"{module}:{uuid.uuid4().hex[:12]}:"
