"""A pub/sub subscription to one channel: on our own connection, or through redis-py.

Both give the invalidation listener the same three operations: ``serve(heard, handle)``
(runs until the subscription is lost, calling ``heard()`` on any traffic, PING replies
included, and ``handle(payload)`` for each message), ``ping()`` and ``aclose()``. Both
raise :class:`RedisConnectionError` when the subscription is lost. On asyncio our own
connection hands messages over from the event loop's callback, with no task between.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import anyio

from ._address import RedisAddress
from ._connection import Connection, pack
from ._errors import client_error

Heard = Callable[[], None]
Handle = Callable[[object], None]


class Subscription(Protocol):
    async def serve(self, heard: Heard, handle: Handle) -> None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class ConnectionSubscription:
    """SUBSCRIBE on a connection of our own (``url=``; asyncio and trio)."""

    def __init__(self, connection: Connection, early: list[object]) -> None:
        self.connection = connection
        self._early = early
        """Messages that arrived with the SUBSCRIBE acknowledgement."""

    @classmethod
    async def open(
        cls, address: RedisAddress, channel: str, ssl_context: ssl.SSLContext | None
    ) -> ConnectionSubscription:
        """Connect and subscribe; return once SUBSCRIBE is acknowledged (run it under a
        deadline)."""
        connection = await Connection.open(address, ssl_context=ssl_context)
        try:
            await connection.send(pack([("SUBSCRIBE", channel)]))
            while True:
                replies = await connection.receive()
                for index, reply in enumerate(replies):
                    if _kind(reply) == b"subscribe":
                        await connection.push_replies()
                        return cls(connection, _payloads(replies[index + 1 :]))
        except BaseException:
            await connection.aclose()
            raise

    async def serve(self, heard: Heard, handle: Handle) -> None:
        connection = self.connection
        early, self._early = self._early, []
        for payload in early:
            handle(payload)
        if connection.pushes:

            def on_replies(replies: list[object]) -> None:
                heard()
                for payload in _payloads(replies):
                    handle(payload)

            connection.on_replies = on_replies
            raise await connection.wait_lost()
        while True:
            replies = await connection.receive()
            heard()
            for payload in _payloads(replies):
                handle(payload)

    async def ping(self) -> None:
        if self.connection.pushes:
            self.connection.send_nowait(pack([("PING",)]))
        else:
            await self.connection.send(pack([("PING",)]))

    async def aclose(self) -> None:
        await self.connection.aclose()


class ClientSubscription:
    """A redis-py ``PubSub`` (``client=``; asyncio only)."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    @classmethod
    async def open(cls, client: Any, channel: str) -> ClientSubscription:
        pubsub = client.pubsub()
        try:
            with _client_errors():
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "subscribe":
                        return cls(pubsub)
        except BaseException:
            await _close(pubsub)
            raise

    async def serve(self, heard: Heard, handle: Handle) -> None:
        while True:
            with _client_errors():
                message = await self.pubsub.get_message(timeout=None)
            heard()
            if message is not None and message.get("type") == "message":
                handle(message.get("data"))

    async def ping(self) -> None:
        with _client_errors():
            await self.pubsub.ping()

    async def aclose(self) -> None:
        await _close(self.pubsub)


@contextmanager
def _client_errors() -> Iterator[None]:
    """redis-py's errors, as ours (see :func:`client_error`)."""
    try:
        yield
    except Exception as error:
        translated = client_error(error)
        if translated is None:
            raise
        raise translated from error


async def _close(pubsub: Any) -> None:
    with anyio.CancelScope(shield=True):
        try:
            close = getattr(pubsub, "aclose", None) or pubsub.reset
            await close()
        except Exception:  # closing a broken subscription is best effort
            pass


def _payloads(replies: list[object]) -> list[object]:
    """The payloads of the ``message`` replies among ``replies``."""
    return [
        reply[2]
        for reply in replies
        if type(reply) is list and len(reply) == 3 and reply[0] == b"message"
    ]


def _kind(reply: object) -> bytes | None:
    if isinstance(reply, list) and reply and isinstance(reply[0], bytes):
        return reply[0]
    return None
