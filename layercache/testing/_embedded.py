"""An in-process Redis-protocol server (fakeredis) for tests and demos without Redis."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Self

from ._service import Service

if TYPE_CHECKING:
    from fakeredis import TcpFakeServer

_HOST = "127.0.0.1"
# fakeredis's connection handlers notice a shutdown within one 10 ms poll; this is the
# patience for one stuck in a write to a client that stopped reading.
_JOIN_TIMEOUT = 2.0


class EmbeddedRedis(Service):
    """A Redis-protocol server running in a background thread of this process.

    It is fakeredis's TCP server on ``127.0.0.1`` (a free port unless ``port`` is given),
    so anything that speaks RESP can connect to :attr:`url`: the layer's own transport,
    redis-py, redis-cli. Lua (EVAL / EVALSHA, through ``lupa``), PUBLISH / SUBSCRIBE and
    RESP3 (HELLO 3) work. Install it with ``pip install layercache[embedded]``.

    **For tests and demos, not production**: everything lives in Python memory, commands
    run one line of Python at a time, pub/sub messages reach subscribers only on a 10 ms
    poll, a reply larger than the socket buffer (a few MB) or a subscriber that stops
    reading gets the connection dropped, and some commands are missing (CLIENT TRACKING,
    DEBUG, WAIT, OBJECT) or only pretended (``requirepass`` is accepted but never
    enforced). Integration tests that need real Redis behaviour use :class:`RedisServer`.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`; stopping closes
    every client connection and joins every thread it started.
    """

    def __init__(
        self, port: int | None = None, *, server_type: Literal["redis", "valkey"] = "redis"
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError("port must be between 1 and 65535, or None for a free one")
        self._requested_port = port
        self.server_type = server_type
        self._server: TcpFakeServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: list[tuple[threading.Thread, socket.socket]] = []

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``: the server listens on loopback only."""
        return _HOST

    @property
    def port(self) -> int:
        """The port it listens on. Raises :class:`RuntimeError` unless it is running."""
        if self._server is None:
            raise RuntimeError("the embedded server is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``. Raises :class:`RuntimeError` unless it is running."""
        return f"redis://{_HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def start(self) -> Self:
        """Bind the port and start serving.

        Raises :class:`RuntimeError` if it is running already, :class:`OSError` if the
        port is taken, :class:`ImportError` (naming the extra to install) without
        fakeredis.
        """
        if self._server is not None:
            raise RuntimeError("the embedded server is already running")
        try:
            from fakeredis import TcpFakeServer
        except ImportError as exc:
            raise ImportError(
                "EmbeddedRedis needs fakeredis: pip install 'layercache[embedded]'"
            ) from exc

        server = TcpFakeServer(
            (_HOST, self._requested_port or 0),
            server_type=self.server_type,
        )
        # fakeredis runs each connection in a non-daemon thread that server_close() joins;
        # a server somebody forgot to stop would then hang interpreter exit for as long
        # as a client stays connected. Daemon threads, tracked here, so stop() joins them.
        server.daemon_threads = True
        server.process_request = partial(self._process_request, server)  # type: ignore[method-assign]
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"layercache-embedded-redis-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join every thread. Idempotent."""
        server, self._server = self._server, None
        serve_thread, self._serve_thread = self._serve_thread, None
        if server is None or serve_thread is None:
            return
        server.shutdown()  # also tells every connection handler to finish
        serve_thread.join()
        server.server_close()
        connections, self._connections = self._connections, []
        for thread, connection in connections:
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                # Blocked writing to a client that does not read: cut the socket under it.
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                thread.join()

    def __repr__(self) -> str:
        if self._server is None:
            return "<EmbeddedRedis stopped>"
        return f"<EmbeddedRedis {self.url} connections={len(self._live_connections())}>"

    def _process_request(self, server: TcpFakeServer, request: Any, client_address: Any) -> None:
        # Runs in the serve_forever thread, the only writer of _connections until stop().
        # Replies go out as written: with Nagle's algorithm on, a reply held back while
        # the client delays its ACK costs tens of milliseconds (pub/sub messages most).
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=server.process_request_thread,
            args=(request, client_address),
            name=f"layercache-embedded-redis-connection-{_format_address(client_address)}",
            daemon=True,
        )
        self._connections = [*self._live_connections(), (thread, request)]
        thread.start()

    def _live_connections(self) -> list[tuple[threading.Thread, socket.socket]]:
        return [(thread, sock) for thread, sock in self._connections if thread.is_alive()]


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
