"""One connection to a Redis server: connect, log in, send bytes, parse replies."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence

import anyio
import anyio.lowlevel
import hiredis
from anyio.abc import ByteStream, SocketAttribute

from .._backend import running_library
from ._address import RedisAddress
from ._errors import (
    RedisConfigurationError,
    RedisConnectionError,
    map_connection_errors,
    refusal,
)

logger = logging.getLogger("layercache.redis.transport")

Command = tuple[str | bytes | int | float, ...]
READ_SIZE = 65536
EAGER_READS = 16
"""Reads in a row that found data waiting before a read yields to other tasks anyway."""
PEEK = 40
"""Bytes of a reply that is not RESP shown in the error (a peer that is not Redis)."""


def pack(commands: Sequence[Command]) -> bytes:
    """Encode commands in RESP, as one buffer for one write."""
    return b"".join([hiredis.pack_command(command) for command in commands])  # type: ignore[arg-type]


class _Pushed(asyncio.BufferedProtocol):
    """asyncio only: hands a connection's data over from the event loop's callback, so
    replies reach their waiters without a trip through a reader task. The loop reads
    into the connection's own buffer (no new bytes object per read)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._connection._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._connection._feed(nbytes)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = str(exc) if exc is not None else "the server closed the connection"
        self._connection.abort(
            RedisConnectionError(f"reading from {self._connection.address.display()}: {reason}")
        )


class Connection:
    """A connected, logged-in stream and the parser of its replies.

    Not safe for concurrent use: its owner (the transport) is the only writer and the
    only reader. After set-up a transport's connection takes the short way where it can
    (``direct_writes``): on trio, :meth:`send_nowait` and :meth:`receive` go straight to
    the socket; on asyncio, a protocol of its own writes and *pushes* the
    replies to :attr:`on_replies` as they arrive (:attr:`pushes`).
    """

    def __init__(self, stream: ByteStream, address: RedisAddress) -> None:
        self.stream = stream
        self.address = address
        self.parser = hiredis.Reader()
        self._reading = map_connection_errors(f"reading from {address.display()} failed")
        self._buffer = memoryview(bytearray(READ_SIZE))
        """Where direct reads land; the parser copies what it is fed, so it is reused."""
        self._direct: socket.socket | None = None
        """A duplicate of the stream's socket that writes go through, once
        :meth:`_write_directly` was called (plain TCP and unix sockets, trio)."""
        self._pushed: _Pushed | None = None
        self.on_replies: Callable[[list[object]], object] | None = None
        """Where a pushing connection hands the replies it parsed (in order)."""
        self._lost: anyio.Event | None = None
        self._lost_error: RedisConnectionError | None = None
        self._eager_reads = 0
        self._received = 0
        self._sent = 0
        self._unfinished = 0

    def progress(self) -> int:
        """A count that grows whenever bytes move either way (read, or written to the
        socket): a transfer still flowing, unlike a server that stopped answering."""
        pushed = self._pushed
        if pushed is not None and pushed.transport is not None:
            # asyncio buffers what the socket does not take yet: count what it wrote.
            return self._received + self._sent - pushed.transport.get_write_buffer_size()
        return self._received + self._sent

    @property
    def unfinished(self) -> int:
        """About how many bytes have come of a reply not complete yet: a large one is
        under way when this grows past a few chunks."""
        return self._unfinished

    @property
    def pushes(self) -> bool:
        """Replies arrive through :attr:`on_replies`, not :meth:`receive`."""
        return self._pushed is not None

    @property
    def reads_directly(self) -> bool:
        """:meth:`receive` reads the socket itself (trio, plain sockets): a task that
        cancels another's receive may read next, with nothing left half-read."""
        return self._direct is not None

    def __repr__(self) -> str:
        return f"<Connection {self.address.display()}>"

    @classmethod
    async def open(
        cls,
        address: RedisAddress,
        *,
        ssl_context: ssl.SSLContext | None = None,
        setup: Sequence[Command] = (),
        direct_writes: bool = False,
    ) -> Connection:
        """Connect, log in and run ``setup``. Run it under a deadline (``fail_after``).

        Logging in checks the credentials and the database with a PING, so a server
        that wants a password none was given for is refused here, not at the first
        request. ``setup`` commands (loading scripts, say) may fail without failing
        the connection (each error is logged), unless the reply says no retry can
        help (see :func:`~._errors.refusal`: an unknown command, an ACL refusal).
        With ``direct_writes``, later writes go through :meth:`send_nowait` and
        :meth:`send_rest` only (see there).

        :raises RedisConnectionError: unreachable, refused, TLS failure, not Redis.
        :raises RedisConfigurationError: the server refused the login, the database or
            a ``setup`` command for good.
        """
        stream = await cls._connect(address, ssl_context)
        connection = cls(stream, address)
        try:
            await connection._log_in()
            if setup:
                check_setup(address.display(), setup, await connection.call(setup))
            if direct_writes and not address.tls:
                await connection._write_directly()
        except BaseException:
            await connection.aclose()
            raise
        return connection

    @classmethod
    async def _connect(
        cls, address: RedisAddress, ssl_context: ssl.SSLContext | None
    ) -> ByteStream:
        hint = address.tls_hint()
        try:
            return await cls._open_stream(address, ssl_context)
        except RedisConnectionError as error:
            if hint and isinstance(error.__cause__, ssl.SSLError):
                # A plain port answers the TLS greeting with a RESP error: "wrong
                # version number" says nothing of the likely mistake.
                raise RedisConnectionError(f"{error}{hint}") from error.__cause__
            raise

    @staticmethod
    async def _open_stream(address: RedisAddress, ssl_context: ssl.SSLContext | None) -> ByteStream:
        with map_connection_errors(f"cannot connect to {address.display()}"):
            if address.path is not None:
                return await anyio.connect_unix(address.path)
            assert address.host is not None
            if address.tls:
                return await anyio.connect_tcp(
                    address.host,
                    address.port,
                    ssl_context=ssl_context or address.ssl_context(),
                    tls_hostname=address.host,
                    tls_standard_compatible=False,
                )
            return await anyio.connect_tcp(address.host, address.port)

    async def _log_in(self) -> None:
        """AUTH (with a password), SELECT (a database other than 0) and a PING, in one
        round trip: the first refusal among them is a configuration error."""
        address = self.address
        where = address.display()
        commands: list[Command] = []
        if address.password is not None:
            login: Command = ("AUTH", address.password)
            if address.username:
                login = ("AUTH", address.username, address.password)
            commands.append(login)
        if address.db:
            commands.append(("SELECT", address.db))
        commands.append(("PING",))
        for command, reply in zip(commands, await self.call(commands), strict=True):
            if not isinstance(reply, hiredis.ReplyError):
                continue
            if command[0] == "AUTH":
                raise RedisConfigurationError(f"authentication failed on {where}: {reply}")
            refused = refusal(where, command, reply)
            if command[0] == "SELECT":
                raise refused or RedisConfigurationError(
                    f"cannot select database {address.db} on {where}: {reply}"
                )
            if refused is not None and str(reply).startswith("NOAUTH"):
                raise refused
            # A PING refused otherwise (LOADING, an ACL without it) proves nothing.
            logger.debug("PING on %s: %s", where, reply)

    async def call(self, commands: Sequence[Command]) -> list[object]:
        """Send ``commands`` and read their replies (for set-up; the transport pipelines)."""
        await self.send(pack(commands))
        replies: list[object] = []
        while len(replies) < len(commands):
            replies.extend(await self.receive())
        return replies

    async def _write_directly(self) -> None:
        """Use a duplicate of the stream's socket from now on.

        Every reply to what the stream sent so far has been read, so nothing of ours is
        left in the stream's buffers, and the stream is not used again until it closes:
        the bytes cannot get out of order. (asyncio hands out a wrapper that cannot
        send, hence the duplicate descriptor.) On asyncio an event-loop transport of our
        own takes the duplicate over, reading and writing.
        """
        raw = self.stream.extra(SocketAttribute.raw_socket, None)
        if raw is None:
            return
        duplicate = os.dup(raw.fileno())
        try:
            direct = socket.socket(fileno=duplicate)
        except BaseException:
            os.close(duplicate)
            raise
        direct.setblocking(False)
        if running_library() != "asyncio":
            self._direct = direct
            return
        self._lost = anyio.Event()
        try:
            _, self._pushed = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Pushed(self), sock=direct
            )
        except BaseException:
            direct.close()
            raise

    async def push_replies(self) -> None:
        """On asyncio (plain sockets), hand replies to :attr:`on_replies` from now on,
        as they arrive; elsewhere (read them with :meth:`receive`), read them straight
        from the socket."""
        if not self.address.tls:
            await self._write_directly()

    def _feed(self, size: int) -> None:
        """A pushing connection read ``size`` bytes into its buffer: parse them and hand
        the replies on."""
        try:
            replies = self._parse(self._buffer, size)
        except RedisConnectionError as error:
            self.abort(error)
            return
        if self.on_replies is not None:
            self.on_replies(replies)  # none, too: the transport watches a large reply

    def abort(self, error: RedisConnectionError) -> None:
        """Give a pushing connection up at once; :meth:`wait_lost` returns ``error``."""
        if self._lost_error is None:
            self._lost_error = error
        pushed = self._pushed
        if pushed is not None and pushed.transport is not None:
            pushed.transport.abort()
        if self._lost is not None:
            self._lost.set()

    async def wait_lost(self) -> RedisConnectionError:
        """Wait until a pushing connection is lost or given up; return why."""
        assert self._lost is not None
        await self._lost.wait()
        assert self._lost_error is not None
        return self._lost_error

    def send_nowait(self, data: bytes) -> int:
        """Write what the socket takes at once, without waiting; return how much.

        No await, so nothing can interrupt it half-way. 0 for a connection without
        direct writes (TLS): :meth:`send_rest` then writes it all.

        :raises RedisConnectionError: the connection is broken.
        """
        pushed = self._pushed
        if pushed is not None:
            transport = pushed.transport
            if transport is None or transport.is_closing():
                raise RedisConnectionError(f"writing to {self.address.display()}: closed")
            transport.write(data)  # what the socket does not take now, it buffers
            self._sent += len(data)
            return len(data)
        direct = self._direct
        if direct is None:
            return 0
        try:
            sent = direct.send(data)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise RedisConnectionError(
                f"writing to {self.address.display()} failed: {error}"
            ) from error
        self._sent += sent
        return sent

    async def send_rest(self, data: bytes, stalled: float) -> None:
        """Write ``data`` (what :meth:`send_nowait` did not), waiting for room, for at
        most ``stalled`` seconds at a time with nothing written.

        A cancelled write may leave part of ``data`` unsent: shield it, and give up the
        connection if it does not finish.

        :raises RedisConnectionError: broken, or no room for ``stalled`` seconds.
        """
        timed_out = RedisConnectionError(f"writing to {self.address.display()} timed out")
        direct = self._direct
        if direct is None:
            with anyio.move_on_after(stalled) as waited:  # TLS: one wait for it all
                await self.send(data)
            if waited.cancelled_caught:
                raise timed_out
            return
        rest = memoryview(data)
        while rest:
            with map_connection_errors(f"writing to {self.address.display()} failed"):
                with anyio.move_on_after(stalled) as waited:
                    await anyio.wait_writable(direct)
                if waited.cancelled_caught:
                    raise timed_out
                try:
                    sent = direct.send(rest)
                except BlockingIOError:
                    continue
                self._sent += sent
                rest = rest[sent:]

    async def send(self, data: bytes) -> None:
        """Write through the stream (set-up, subscriptions: not after direct writes)."""
        with map_connection_errors(f"writing to {self.address.display()} failed"):
            await self.stream.send(data)
        self._sent += len(data)

    async def receive(self) -> list[object]:
        """Wait for data and return every complete reply it finished (maybe none)."""
        direct = self._direct
        if direct is not None:
            return self._parse(self._buffer, await self._receive_directly(direct))
        with self._reading:
            data = await self.stream.receive(READ_SIZE)
        return self._parse(data, len(data))

    def _parse(self, data: bytes | memoryview, size: int) -> list[object]:
        """Every complete reply the first ``size`` bytes of ``data`` finish (maybe none)."""
        self._received += size
        self.parser.feed(data, 0, size)  # type: ignore[arg-type]  # any buffer will do
        replies: list[object] = []
        try:
            reply = self.parser.gets()
            while reply is not False:
                replies.append(reply)
                reply = self.parser.gets()
        except hiredis.ProtocolError as error:
            start = bytes(data[: min(size, PEEK)])
            shown = repr(start) + ("…" if size > PEEK else "")
            raise RedisConnectionError(
                f"protocol error from {self.address.display()}: not a Redis reply, received {shown}"
            ) from error
        # Counted from the end of the last complete reply, give or take one chunk.
        self._unfinished = 0 if replies else self._unfinished + size
        return replies

    async def _receive_directly(self, direct: socket.socket) -> int:
        """Read from the duplicate socket into the buffer; return how much came. What
        is there already comes without waiting (a stream read would yield to the
        scheduler twice), the rest once the socket is readable."""
        with self._reading:
            if self._eager_reads >= EAGER_READS:
                self._eager_reads = 0
                await anyio.lowlevel.checkpoint()  # a busy connection lets others run too
            while True:
                try:
                    size = direct.recv_into(self._buffer)
                except BlockingIOError:
                    self._eager_reads = 0
                    await anyio.wait_readable(direct)
                    continue
                self._eager_reads += 1
                if not size:
                    raise anyio.EndOfStream
                return size

    async def aclose(self) -> None:
        if self._pushed is not None:
            self.abort(RedisConnectionError(f"the connection to {self.address.display()} closed"))
        direct, self._direct = self._direct, None
        if direct is not None:
            anyio.notify_closing(direct)  # a write waiting for room gives up now
            direct.close()  # the duplicate only: the stream's socket closes below
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass


def check_setup(where: str, setup: Sequence[Command], replies: list[object]) -> None:
    """Log the error replies to ``setup`` commands, but raise the first that refuses
    for good (see :func:`~._errors.refusal`).

    :raises RedisConfigurationError: ``where`` lacks or forbids a ``setup`` command.
    """
    for command, reply in zip(setup, replies, strict=True):
        if isinstance(reply, hiredis.ReplyError):
            refused = refusal(where, command, reply)
            if refused is not None:
                raise refused
            logger.warning("%s on %s: %s", command[0], where, reply)
