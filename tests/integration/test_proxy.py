"""The fault-injection proxy (:class:`layercache.testing.FaultProxy`) against a real server.

Synchronous: raw sockets and redis-py's sync client. No timing assertions: a fault shows
as a socket timeout far shorter than the fault itself (a reply that cannot have come
yet), followed by what arrives once the fault is lifted.
"""

from __future__ import annotations

import gc
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from layercache.testing import FaultProxy, RedisServer

SHORT = 0.05
"""A socket timeout far below every fault the tests inject."""
PATIENT = 10.0
"""A socket timeout for replies that must come: only a broken proxy reaches it."""


def resp(*words: str) -> bytes:
    encoded = [word.encode() for word in words]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)


PING = resp("PING")
PONG = b"+PONG\r\n"


def target_port(server: RedisServer) -> int:
    assert server.port is not None
    return server.port


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=PATIENT)


def receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return data


def expect(connection: socket.socket, reply: bytes) -> None:
    assert receive_exactly(connection, len(reply)) == reply


def assert_no_reply_yet(connection: socket.socket) -> None:
    connection.settimeout(SHORT)
    with pytest.raises(TimeoutError):
        connection.recv(1)
    connection.settimeout(PATIENT)


def assert_reset(connection: socket.socket) -> None:
    with pytest.raises(ConnectionResetError):
        connection.recv(1)


def assert_closed(connection: socket.socket) -> None:
    """The connection ended: an end-of-stream or a reset, whichever the kernel reports."""
    try:
        data = connection.recv(1)
    except ConnectionResetError:
        return
    assert data == b""


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", target_port(redis_server)) as proxy:
        yield proxy


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client that talks to the server itself, around the proxy."""
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


@pytest.fixture
def key() -> str:
    return f"proxy-test:{uuid.uuid4().hex}"


def test_url_and_port(proxy: FaultProxy) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}"
    assert proxy.mode == "pass-through"
    assert f"127.0.0.1:{proxy.port}" in repr(proxy)


def test_pass_through_forwards_both_ways(proxy: FaultProxy, direct: redis.Redis, key: str) -> None:
    with connect(proxy) as connection:
        connection.sendall(PING * 100)
        expect(connection, PONG * 100)
    # A value larger than the proxy's per-direction buffer, through a real client.
    big = bytes(range(256)) * 8192
    with redis.Redis.from_url(proxy.url) as client:
        assert client.set(key, big)
        assert client.get(key) == big
    assert direct.get(key) == big
    assert proxy.accepted == 2
    assert proxy.bytes_from_clients > len(big)
    assert proxy.bytes_from_target > len(big)


def test_delay_holds_every_chunk_back_in_order(proxy: FaultProxy, key: str) -> None:
    with connect(proxy) as connection:
        expect_pong(connection)
        proxy.delay(0.25)
        assert proxy.mode == "delay"
        connection.sendall(PING)
        assert_no_reply_yet(connection)
        expect(connection, PONG)
        # Separate chunks keep their order.
        for command in (resp("SET", key, "1"), resp("INCR", key), resp("GET", key)):
            connection.sendall(command)
        expect(connection, b"+OK\r\n:2\r\n$1\r\n2\r\n")
        proxy.pass_through()
        expect_pong(connection)


def expect_pong(connection: socket.socket) -> None:
    connection.sendall(PING)
    expect(connection, PONG)


def test_black_hole_forwards_nothing_until_lifted(
    proxy: FaultProxy, direct: redis.Redis, key: str
) -> None:
    with connect(proxy) as before:
        expect_pong(before)
        proxy.black_hole()
        assert proxy.mode == "black-hole"
        before.sendall(resp("SET", key, "held"))
        assert_no_reply_yet(before)
        with connect(proxy) as during:  # new connections are accepted, and swallowed too
            during.sendall(PING)
            assert_no_reply_yet(during)
            assert direct.get(key) is None  # the server never saw the SET
            proxy.pass_through()
            with connect(proxy) as after:
                expect_pong(after)
            # What was held goes on, as after a healed partition.
            expect(before, b"+OK\r\n")
            expect(during, PONG)
    assert direct.get(key) == b"held"


def test_black_hole_holds_a_bounded_amount(proxy: FaultProxy) -> None:
    with connect(proxy) as connection:
        expect_pong(connection)
        read_before = proxy.bytes_from_clients
        proxy.black_hole()
        connection.setblocking(False)
        with pytest.raises(BlockingIOError):  # the kernel's buffers filled up: back-pressure
            send_forever(connection, limit=256 * 1024 * 1024)
        assert proxy.bytes_from_clients == read_before  # the proxy read none of it


def send_forever(connection: socket.socket, limit: int) -> None:
    """Send until the socket would block (raises BlockingIOError) or ``limit`` is sent."""
    block = b"x" * 65536
    sent = 0
    while sent < limit:
        sent += connection.send(block)


def test_reset_connections_aborts_open_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        expect_pong(first)
        expect_pong(second)
        proxy.reset_connections()
        assert proxy.connections == 0
        assert_reset(first)
        assert_reset(second)
    with connect(proxy) as again:  # the mode stays pass-through
        expect_pong(again)


def test_reset_connections_keeps_the_mode(proxy: FaultProxy) -> None:
    proxy.black_hole()
    with connect(proxy) as swallowed:
        swallowed.sendall(PING)
        assert_no_reply_yet(swallowed)
        proxy.reset_connections()
        assert_reset(swallowed)
    assert proxy.mode == "black-hole"
    with connect(proxy) as still_swallowed:
        still_swallowed.sendall(PING)
        assert_no_reply_yet(still_swallowed)
        proxy.pass_through()
        expect(still_swallowed, PONG)


def test_refuse_then_accept_again_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    with connect(proxy) as established:
        expect_pong(established)
        proxy.refuse()
        assert proxy.mode == "refuse"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=PATIENT)
        expect_pong(established)  # open connections keep forwarding
        proxy.pass_through()
        assert proxy.port == port
        with connect(proxy) as new:
            expect_pong(new)


def test_a_dead_target_closes_and_resets_clients(own_redis_server: RedisServer) -> None:
    with FaultProxy("127.0.0.1", target_port(own_redis_server)) as proxy:
        with connect(proxy) as connection:
            expect_pong(connection)
            own_redis_server.kill()
            assert_closed(connection)  # the server's end-of-stream is passed on
        # The proxy accepts, the target refuses: the client is reset, maybe even before
        # its connect() call has returned.
        try:
            refused_upstream = connect(proxy)
        except ConnectionResetError:
            pass
        else:
            with refused_upstream:
                assert_reset(refused_upstream)
        own_redis_server.start()
        with connect(proxy) as connection:
            expect_pong(connection)


def test_mode_switches_from_many_threads(proxy: FaultProxy) -> None:
    def toggle() -> None:
        for _ in range(50):
            proxy.black_hole()
            proxy.delay(0.001)
            proxy.pass_through()

    with connect(proxy) as connection:
        threads = [threading.Thread(target=toggle) for _ in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(20):
            expect_pong(connection)
        for thread in threads:
            thread.join()
        proxy.pass_through()
        expect_pong(connection)


def test_stop_closes_everything(redis_server: RedisServer) -> None:
    proxy = FaultProxy("127.0.0.1", target_port(redis_server))
    with pytest.raises(RuntimeError, match="not been started"):
        _ = proxy.url
    with pytest.raises(RuntimeError, match="not running"):
        proxy.black_hole()
    assert "unstarted" in repr(proxy)
    proxy.start()
    port = proxy.port
    with connect(proxy) as open_connection, connect(proxy) as swallowed:
        expect_pong(open_connection)
        proxy.black_hole()
        swallowed.sendall(PING)
        proxy.stop()
        assert_closed(open_connection)
        assert_closed(swallowed)
    assert not any(thread.name.startswith("FaultProxy") for thread in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=PATIENT)
    proxy.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        proxy.pass_through()
    with pytest.raises(RuntimeError, match="only once"):
        proxy.start()
    gc.collect()  # an unclosed socket would warn here, and warnings are errors


def test_delay_must_be_a_duration(proxy: FaultProxy) -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="delay"):
            proxy.delay(bad)


def test_choke_forwards_so_much_then_holds_until_lifted(
    proxy: FaultProxy, direct: redis.Redis, key: str
) -> None:
    direct.set(key, "v" * 1000)
    reply = b"$1000\r\n" + b"v" * 1000 + b"\r\n"
    with connect(proxy) as connection:
        expect_pong(connection)
        proxy.choke(after=500)  # more than the request, less than the reply
        assert proxy.mode == "choke"
        connection.sendall(resp("GET", key))
        expect(connection, reply[:500])  # the allowance, to the byte
        assert_no_reply_yet(connection)
        with connect(proxy) as other:  # a new connection gets an allowance of its own
            expect_pong(other)
        proxy.pass_through()
        expect(connection, reply[500:])
        expect_pong(connection)


def test_choke_takes_a_byte_count(proxy: FaultProxy) -> None:
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError, match="after"):
            proxy.choke(after=bad)  # type: ignore[arg-type]
