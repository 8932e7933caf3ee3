"""One connection to a Redis server: connect, log in, send bytes, parse replies."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import anyio
import hiredis
from anyio.abc import ByteStream

from ._address import RedisAddress
from ._errors import (
    RedisConfigurationError,
    RedisConnectionError,
    RedisReplyError,
    map_connection_errors,
)

logger = logging.getLogger("layercache.redis.transport")

Command = tuple[str | bytes | int | float, ...]
READ_SIZE = 65536


def pack(commands: Sequence[Command]) -> bytes:
    """Encode commands in RESP, as one buffer for one write."""
    return b"".join([hiredis.pack_command(command) for command in commands])  # type: ignore[arg-type]


class Connection:
    """A connected, logged-in stream and the parser of its replies.

    Not safe for concurrent use: its owner (the transport) is the only writer and the
    only reader.
    """

    def __init__(self, stream: ByteStream, address: RedisAddress) -> None:
        self.stream = stream
        self.address = address
        self.parser = hiredis.Reader()

    def __repr__(self) -> str:
        return f"<Connection {self.address.display()}>"

    @classmethod
    async def open(
        cls,
        address: RedisAddress,
        *,
        ssl_context: ssl.SSLContext | None = None,
        setup: Sequence[Command] = (),
    ) -> Connection:
        """Connect, log in and run ``setup``. Run it under a deadline (``fail_after``).

        ``setup`` commands (loading scripts, say) may fail without failing the
        connection: each error is logged.

        :raises RedisConnectionError: unreachable, refused, TLS failure.
        :raises RedisConfigurationError: the server refused AUTH or SELECT.
        """
        stream = await cls._connect(address, ssl_context)
        connection = cls(stream, address)
        try:
            await connection._log_in()
            if setup:
                for command, reply in zip(setup, await connection.call(setup), strict=True):
                    if isinstance(reply, hiredis.ReplyError):
                        logger.warning("%s on %s: %s", command[0], address.display(), reply)
        except BaseException:
            await connection.aclose()
            raise
        return connection

    @staticmethod
    async def _connect(address: RedisAddress, ssl_context: ssl.SSLContext | None) -> ByteStream:
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
        address = self.address
        if address.password is not None:
            login: Command = ("AUTH", address.password)
            if address.username:
                login = ("AUTH", address.username, address.password)
            await self._expect_ok(login, "authentication failed")
        if address.db:
            await self._expect_ok(("SELECT", address.db), f"cannot select database {address.db}")

    async def _expect_ok(self, command: Command, what: str) -> None:
        (reply,) = await self.call([command])
        if isinstance(reply, hiredis.ReplyError):
            raise RedisConfigurationError(f"{what} on {self.address.display()}: {reply}")

    async def call(self, commands: Sequence[Command]) -> list[object]:
        """Send ``commands`` and read their replies (for set-up; the transport pipelines)."""
        await self.send(pack(commands))
        replies: list[object] = []
        while len(replies) < len(commands):
            replies.extend(await self.receive())
        return replies

    async def send(self, data: bytes) -> None:
        with map_connection_errors(f"writing to {self.address.display()} failed"):
            await self.stream.send(data)

    async def receive(self) -> list[object]:
        """Wait for data and return every complete reply it finished (maybe none)."""
        with map_connection_errors(f"reading from {self.address.display()} failed"):
            data = await self.stream.receive(READ_SIZE)
        self.parser.feed(data)
        replies: list[object] = []
        try:
            reply = self.parser.gets()
            while reply is not False:
                replies.append(reply)
                reply = self.parser.gets()
        except hiredis.ProtocolError as error:
            raise RedisConnectionError(f"protocol error from {self.address.display()}") from error
        return replies

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass


def reply_error(reply: object) -> RedisReplyError | None:
    """The error a reply carries, if it is one."""
    if isinstance(reply, hiredis.ReplyError):
        return RedisReplyError(str(reply))
    return None
