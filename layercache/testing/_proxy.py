"""A loopback TCP proxy that injects network faults, for fault tests.

:class:`FaultProxy` listens on a free loopback port and forwards every connection to a
target (a Redis server, say). One background thread runs a selector loop over all the
sockets, so the proxy works under asyncio, trio, plain threads and other processes
alike. Tests switch its behaviour at any time; a switch applies to the connections open
at that moment and to new ones, and has taken effect when the call returns:

- :meth:`~FaultProxy.pass_through`: forward everything (the default);
- :meth:`~FaultProxy.delay`: forward every chunk, in order, ``seconds`` after it arrived;
- :meth:`~FaultProxy.choke`: forward at most so many more bytes each way on every
  connection, then hold the rest (a transfer stuck midway, while small requests on other
  connections still pass);
- :meth:`~FaultProxy.black_hole`: accept connections and bytes, forward nothing either
  way (the proxy stops reading, so the kernel's buffers are the only ones that fill; what
  was already read is held, and goes on when the black hole is lifted, as after a healed
  network partition);
- :meth:`~FaultProxy.reset_connections`: abort every open connection with a TCP RST on
  both sides, keeping the current behaviour for new ones;
- :meth:`~FaultProxy.refuse`: refuse new connections (RST) on the same port until
  :meth:`~FaultProxy.pass_through`; open connections keep forwarding.

Memory is bounded: each direction of a connection holds at most ``BUFFER_LIMIT`` bytes;
past that the proxy stops reading from the sender until the receiver catches up.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Self

from ._service import Service

BUFFER_LIMIT = 256 * 1024
"""Bytes one direction of one connection may hold (delayed or not yet sent)."""
CHUNK = 64 * 1024
_COMMAND_TIMEOUT = 10.0
_JOIN_TIMEOUT = 10.0
_RST_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

_PASS, _DELAY, _CHOKE, _BLACK_HOLE, _REFUSE = (
    "pass-through",
    "delay",
    "choke",
    "black-hole",
    "refuse",
)


class _Direction:
    """Bytes flowing from one socket to the other, each chunk no earlier than its due time."""

    def __init__(self, source: socket.socket, target: socket.socket) -> None:
        self.source = source
        self.target = target
        self.chunks: deque[tuple[float, bytes]] = deque()  # (due, data), in arrival order
        self.buffered = 0
        self.eof = False  # the source finished sending
        self.shut = False  # ... and the target has been told so
        self.allowance: int | None = None  # bytes it may still forward (None: any)

    def wants_to_read(self) -> bool:
        return not self.eof and self.buffered < BUFFER_LIMIT

    def due_at(self) -> float | None:
        if self.allowance == 0:
            return None  # choked: nothing is due until the mode changes
        return self.chunks[0][0] if self.chunks else None


class _Connection:
    """A client connection and its connection to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket, connected: bool) -> None:
        self.client = client
        self.upstream = upstream
        self.connected = connected  # the upstream connect() has completed
        self.outbound = _Direction(client, upstream)
        self.inbound = _Direction(upstream, client)
        self.closed = False

    def directions(self) -> tuple[_Direction, _Direction]:
        return self.outbound, self.inbound

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.client, self.upstream


class FaultProxy(Service):
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults on demand.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`)::

        with FaultProxy("127.0.0.1", server.port) as proxy:
            layer = RedisLayer(url=proxy.url, timeout=0.2)
            ...
            proxy.black_hole()

    The mode switches are thread-safe and synchronous: when one returns, the proxy
    behaves the new way. They raise :class:`RuntimeError` if the proxy is not running.
    ``bytes_from_clients`` / ``bytes_from_target`` count what the proxy has read from
    each side (whether or not it was forwarded yet) and ``accepted`` the connections it
    took; they are written by the proxy thread and may be read from any thread.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.accepted = 0
        self.bytes_from_clients = 0
        self.bytes_from_target = 0
        self._requested_port = port
        self._port: int | None = None
        self._mode = _PASS
        self._delay = 0.0
        self._allowance: int | None = None  # what a new connection may forward each way
        self._lock = threading.Lock()
        self._traffic = threading.Condition()
        self._commands: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False  # the thread has finished (set under the lock)
        self._failure: BaseException | None = None
        # Created by start(); after that, touched by the proxy thread only (except that
        # other threads write a byte to _wake_writer to wake it up).
        self._selector: selectors.BaseSelector
        self._wake_reader: socket.socket
        self._wake_writer: socket.socket
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None  # holds the port while refusing
        self._connections: list[_Connection] = []
        self._interest: dict[socket.socket, int] = {}

    # -- the public face ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The loopback port clients connect to. Raises :class:`RuntimeError` before
        :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the proxy has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``: give it to a layer instead of the server's URL."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        """``"pass-through"``, ``"delay"``, ``"black-hole"`` or ``"refuse"``."""
        return self._mode

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._connections)

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "unstarted"
        mode = f"delay={self._delay}" if self._mode == _DELAY else self._mode
        return (
            f"<FaultProxy {where} -> {self.target[0]}:{self.target[1]} {mode} "
            f"connections={len(self._connections)}>"
        )

    def start(self) -> Self:
        """Listen on a free loopback port (or the ``port`` given) and start forwarding.

        Raises :class:`RuntimeError` if it was started before, :class:`OSError` if the
        port cannot be bound.
        """
        if self._thread is not None or self._closed:
            raise RuntimeError("a FaultProxy can be started only once")
        listener = _listening_socket(self._requested_port)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        for sock in (self._wake_reader, self._wake_writer):
            sock.setblocking(False)
        self._watch(self._wake_reader, selectors.EVENT_READ)
        self._watch(listener, selectors.EVENT_READ)
        self._thread = threading.Thread(
            target=self._run, name=f"FaultProxy :{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and join the thread. Idempotent.

        Re-raises (as the cause of a :class:`RuntimeError`) an error that killed the
        proxy thread, if one did.
        """
        thread = self._thread
        if thread is None or self._stopping:
            return
        self._stopping = True
        self._wake()
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"{self!r} did not stop within {_JOIN_TIMEOUT} s")
        self._wake_reader.close()
        self._wake_writer.close()
        if self._failure is not None:
            raise RuntimeError(f"{self!r} failed") from self._failure

    def pass_through(self) -> None:
        """Forward everything, at once; accept connections again after :meth:`refuse`."""
        self._apply(lambda: self._set_mode(_PASS))

    def delay(self, seconds: float) -> None:
        """Forward every chunk that arrives from now on ``seconds`` late, in order."""
        if not seconds >= 0:
            raise ValueError(f"delay must be a non-negative number of seconds, got {seconds!r}")
        self._apply(lambda: self._set_mode(_DELAY, seconds))

    def choke(self, after: int) -> None:
        """On every connection, open or new, forward ``after`` more bytes each way, then
        hold the rest (read up to the buffer limit) until the mode changes."""
        if not (isinstance(after, int) and after >= 0):
            raise ValueError(f"after must be a non-negative int of bytes, got {after!r}")
        self._apply(lambda: self._set_mode(_CHOKE, allowance=after))

    def black_hole(self) -> None:
        """Keep connections open and accept bytes, but forward nothing either way."""
        self._apply(lambda: self._set_mode(_BLACK_HOLE))

    def refuse(self) -> None:
        """Refuse new connections until :meth:`pass_through`; open ones keep forwarding."""
        self._apply(lambda: self._set_mode(_REFUSE))

    def reset_connections(self) -> None:
        """Abort every open connection with a TCP RST to both ends; the mode stays."""
        self._apply(self._reset_all)

    def wait_for_client_bytes(self, more_than: int, timeout: float) -> bool:
        """Block until the proxy has read more than ``more_than`` bytes from clients.

        For tests that must act once requests are on the wire (from async code, run it
        in a worker thread: ``anyio.to_thread.run_sync``). Returns False on timeout.
        """
        with self._traffic:
            return self._traffic.wait_for(lambda: self.bytes_from_clients > more_than, timeout)

    # -- talking to the proxy thread ---------------------------------------------------

    def _apply(self, change: Callable[[], None]) -> None:
        """Run ``change`` on the proxy thread, between two turns of its loop, and wait."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or self._closed:
                raise RuntimeError("the proxy is not running")
            self._commands.append((change, done))
        self._wake()
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"{self!r} did not respond within {_COMMAND_TIMEOUT} s")
        if self._closed:
            raise RuntimeError("the proxy stopped")

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # the buffer is full, so the loop is awake anyway; or it is stopped

    # -- the proxy thread --------------------------------------------------------------

    def _run(self) -> None:
        timeout: float | None = None
        try:
            while not self._stopping:
                for key, events in self._selector.select(timeout):
                    if key.data is None:
                        self._on_listener_or_wake(key.fileobj)  # type: ignore[arg-type]
                    else:
                        self._on_ready(key.data, key.fileobj, events)  # type: ignore[arg-type]
                self._run_commands()
                self._forward()
                timeout = self._update_interest()
        except BaseException as error:
            self._failure = error
        finally:
            for connection in list(self._connections):
                self._close(connection)
            for sock in (self._listener, self._placeholder):
                if sock is not None:
                    sock.close()
            self._listener = self._placeholder = None
            self._selector.close()
            with self._lock:
                self._closed = True
                # Whoever still waits for a command learns that the proxy is gone.
                for _, done in self._commands:
                    done.set()
                self._commands.clear()

    def _on_listener_or_wake(self, sock: socket.socket) -> None:
        if sock is self._listener:
            self._accept()
            return
        try:
            while sock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_ready(self, connection: _Connection, sock: socket.socket, events: int) -> None:
        if connection.closed:
            return  # aborted earlier in this turn
        if sock is connection.upstream and not connection.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._abort(connection)  # the target refused: so does this connection
                return
            connection.connected = True
        if events & selectors.EVENT_READ:
            self._receive(connection, sock is connection.client)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            self.accepted += 1
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status = upstream.connect_ex(self.target)
            connection = _Connection(client, upstream, connected=status == 0)
            for direction in connection.directions():
                direction.allowance = self._allowance
            self._connections.append(connection)
            if status not in (0, errno.EINPROGRESS):
                self._abort(connection)

    def _receive(self, connection: _Connection, from_client: bool) -> None:
        direction = connection.outbound if from_client else connection.inbound
        try:
            data = direction.source.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort(connection)
            return
        if not data:
            direction.eof = True
            return
        with self._traffic:
            if from_client:
                self.bytes_from_clients += len(data)
            else:
                self.bytes_from_target += len(data)
            self._traffic.notify_all()
        late = self._delay if self._mode == _DELAY else 0.0
        direction.chunks.append((time.monotonic() + late, data))
        direction.buffered += len(data)

    def _forward(self) -> None:
        """Send what is due on every connection; pass on end-of-stream; close what is done."""
        if self._mode == _BLACK_HOLE:
            return
        now = time.monotonic()
        for connection in list(self._connections):
            if not connection.connected:
                continue
            try:
                for direction in connection.directions():
                    _send_due(direction, now)
            except OSError:
                self._abort(connection)
                continue
            if all(direction.shut for direction in connection.directions()):
                self._close(connection)

    def _update_interest(self) -> float | None:
        """Watch each socket for what its connection can do next.

        Returns the seconds until the next delayed chunk is due (None: none is waiting).
        A chunk that is already due is still here only because its socket had no room,
        so that socket is watched for room instead.
        """
        active = self._mode != _BLACK_HOLE
        now = time.monotonic()
        next_due: float | None = None
        for connection in self._connections:
            wanted = dict.fromkeys(connection.sockets(), 0)
            if not connection.connected:
                wanted[connection.upstream] = selectors.EVENT_WRITE  # connect() completes
            for direction in connection.directions():
                readable = direction.source is connection.client or connection.connected
                if active and readable and direction.wants_to_read():
                    wanted[direction.source] |= selectors.EVENT_READ
                due = direction.due_at()
                if not (active and connection.connected and due is not None):
                    continue
                if due <= now:
                    wanted[direction.target] |= selectors.EVENT_WRITE
                elif next_due is None or due < next_due:
                    next_due = due
            for sock, events in wanted.items():
                self._watch(sock, events, connection)
        return None if next_due is None else next_due - now

    def _watch(self, sock: socket.socket, events: int, data: _Connection | None = None) -> None:
        current = self._interest.get(sock, 0)
        if events == current:
            return
        if events == 0:
            self._selector.unregister(sock)
            del self._interest[sock]
        elif current == 0:
            self._selector.register(sock, events, data)
            self._interest[sock] = events
        else:
            self._selector.modify(sock, events, data)
            self._interest[sock] = events

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                change, done = self._commands.popleft()
            try:
                change()
            finally:
                done.set()

    def _set_mode(self, mode: str, delay: float = 0.0, allowance: int | None = None) -> None:
        if mode == _REFUSE and self._listener is not None:
            # The listener goes (connections it had not accepted yet get RST); a socket
            # that is bound but not listening keeps the port ours, and the kernel refuses
            # connections to it.
            self._forget(self._listener)
            self._listener.close()
            self._listener = None
            self._placeholder = _bound_socket(self.port)
        elif mode != _REFUSE and self._listener is None:
            self._listener = _listening_socket(self.port)
            if self._placeholder is not None:
                self._placeholder.close()
                self._placeholder = None
            self._watch(self._listener, selectors.EVENT_READ)
        self._mode = mode
        self._delay = delay
        self._allowance = allowance
        for connection in self._connections:
            for direction in connection.directions():
                direction.allowance = allowance

    def _reset_all(self) -> None:
        for connection in list(self._connections):
            self._abort(connection)

    def _abort(self, connection: _Connection) -> None:
        """Close both ends with RST, as a broken network path would."""
        for sock in connection.sockets():
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
            except OSError:
                pass  # already dead
        self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._connections.remove(connection)
        for sock in connection.sockets():
            self._forget(sock)
            sock.close()

    def _forget(self, sock: socket.socket) -> None:
        if self._interest.pop(sock, 0):
            self._selector.unregister(sock)


def _send_due(direction: _Direction, now: float) -> None:
    """Send the chunks that are due, stopping at the first the socket cannot take whole.

    Raises OSError when the receiving end is gone.
    """
    while direction.chunks and direction.chunks[0][0] <= now and direction.allowance != 0:
        due, data = direction.chunks[0]
        allowance = direction.allowance
        try:
            sent = direction.target.send(data if allowance is None else data[:allowance])
        except (BlockingIOError, InterruptedError):
            return
        if allowance is not None:
            direction.allowance = allowance - sent
        direction.buffered -= sent
        if sent < len(data):
            direction.chunks[0] = (due, data[sent:])
            return
        direction.chunks.popleft()
    if direction.eof and not direction.chunks and not direction.shut:
        direction.target.shutdown(socket.SHUT_WR)
        direction.shut = True


def _listening_socket(port: int) -> socket.socket:
    listener = _bound_socket(port)
    try:
        listener.listen(128)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def _bound_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Lets the port be bound again at once, while accepted connections still use it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock
