"""The Redis test servers themselves, the part that starts no process: the embedded
(in-process fakeredis) server and the binary lookup's error. The real process manager
is in tests/integration/test_redis_servers.py.

These tests are synchronous: they check thread management, not async code.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from layercache.testing import EmbeddedRedis, RedisServerError, ServerBinary
from layercache.testing import _server as server_module

from ..helpers import first_reply_line

# -- binary discovery -----------------------------------------------------------------


def test_environment_variable_naming_nothing_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(server_module.SERVER_ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(RedisServerError, match="LAYERCACHE_REDIS_SERVER="):
        ServerBinary.find()


# -- the embedded server ----------------------------------------------------------------


def embedded_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("layercache-embedded-redis")]


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


def test_embedded_set_get_and_lua(embedded_redis: EmbeddedRedis) -> None:
    assert embedded_redis.url == f"redis://127.0.0.1:{embedded_redis.port}"
    with redis.Redis.from_url(embedded_redis.url) as client:
        assert client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"
        sha = client.script_load("return ARGV[1]")
        assert client.evalsha(sha, 0, "echo") == b"echo"


def test_embedded_publish_subscribe(embedded_redis: EmbeddedRedis) -> None:
    with (
        redis.Redis.from_url(embedded_redis.url) as client,
        client.pubsub() as subscriber,
    ):
        subscriber.subscribe("news")
        confirmation = subscriber.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        assert client.publish("news", "hello") == 1
        message = subscriber.get_message(timeout=5)
        assert message is not None
        assert (message["channel"], message["data"]) == (b"news", b"hello")


def test_embedded_speaks_resp3(embedded_redis: EmbeddedRedis) -> None:
    with redis.Redis.from_url(embedded_redis.url, protocol=3) as client:
        assert client.hset("h", "f", "v") == 1
        assert client.hgetall("h") == {b"f": b"v"}


def test_embedded_stops_cleanly(no_thread_leak: None) -> None:
    server = EmbeddedRedis()
    assert repr(server) == "<EmbeddedRedis stopped>"
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            idle = socket.create_connection(("127.0.0.1", port), timeout=5)
            assert first_reply_line(idle, "PING") == b"+PONG\r\n"
            assert "connections=2" in repr(server)
            # Threads are daemons: a server somebody forgets to stop cannot hang exit.
            assert embedded_threads()
            assert all(thread.daemon for thread in embedded_threads())
    with idle:
        assert idle.recv(1) == b""  # the connection left open was closed by stop()
    assert not embedded_threads()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    server.stop()  # idempotent


def test_embedded_on_a_given_port() -> None:
    port = server_module._free_port()
    with EmbeddedRedis(port) as server:
        assert server.url == f"redis://127.0.0.1:{port}"
