"""The Redis set-up that the Redis layer, the invalidation bus and the coordinator share.

Owns: the choice between ``url=`` (a :class:`~._transport.Transport` of our own) and
``client=`` (a ``redis.asyncio`` client through :class:`~._adapter.ClientTransport`),
checked without I/O; starting that transport in a task group, where a refused start
becomes the owner's :class:`~layercache.LayerUnavailableError` and nothing leaves as an
exception group; and the translation of Redis errors and error replies into that error
(a reply that refuses the configuration, such as ``NOPERM``, keeps saying so). Each of
the three actors is made with one :class:`RedisEndpoint`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import hiredis

from .._exceptions import LayerUnavailableError
from .._validation import check_duration
from ._adapter import ClientTransport
from ._address import RedisAddress, parse_redis_url
from ._connection import Command
from ._errors import RedisConfigurationError, reply_error
from ._lanes import Lanes
from ._subscription import ClientSubscription, ConnectionSubscription, Subscription
from ._transport import Transport


class RedisEndpoint:
    """Where a Redis actor talks to: a parsed ``url=``, or a ``client=``.

    :param owner: the class given the arguments, for the error messages.
    :param timeout: seconds any request may take (see :func:`check_duration`).
    :param ssl_context: for ``rediss://``, a custom ``ssl.SSLContext``.
    :raises TypeError, ValueError: not exactly one of ``url`` and ``client``, a bad URL,
        or a bad ``timeout``.
    """

    __slots__ = ("address", "client", "ssl_context", "timeout")

    def __init__(
        self, owner: str, url: str | None, client: Any, *, timeout: object, ssl_context: Any
    ) -> None:
        if (url is None) == (client is None):
            raise TypeError(f"{owner} needs exactly one of url= or client=")
        self.address: RedisAddress | None = parse_redis_url(url) if url is not None else None
        self.client: Any = client
        self.timeout = check_duration(timeout, "timeout")
        self.ssl_context: Any = ssl_context

    def __repr__(self) -> str:
        return f"<RedisEndpoint {self.display()}>"

    def display(self) -> str:
        """Where the server is, for reprs (never the password)."""
        return self.address.display() if self.address is not None else repr(self.client)

    @asynccontextmanager
    async def transport(
        self, name: str, setup: Sequence[Command] = ()
    ) -> AsyncIterator[Transport | ClientTransport]:
        """Run a transport to the server for the block, started: connected, or trying
        to connect in the background; cancelled when the block ends.

        :param name: the owner's name, for :class:`LayerUnavailableError`.
        :param setup: commands each new connection sends first (a ``client=``: once,
            at the start), whose refusal for good fails the start.
        :raises LayerUnavailableError: the server refused the configuration (password,
            database, a ``setup`` command it lacks or forbids).
        :raises TypeError: a ``client=`` under trio.

        Whatever fails the start, or leaves the block, is raised by itself, not in an
        exception group (the task group here is an implementation detail).
        """
        async with self._running(name, [self._transport(setup)]) as (transport,):
            yield transport

    @asynccontextmanager
    async def lanes(self, name: str, setup: Sequence[Command] = ()) -> AsyncIterator[Lanes]:
        """Like :meth:`transport`, with a spare connection for ``url=`` (see
        :class:`~._lanes.Lanes`): two transports sharing one signal."""
        main = self._transport(setup)
        spare = self._spare(main, setup) if isinstance(main, Transport) else None
        async with self._running(name, [main] if spare is None else [main, spare]):
            yield Lanes(main, spare)

    def _transport(self, setup: Sequence[Command]) -> Transport | ClientTransport:
        if self.address is not None:
            return Transport(
                self.address, timeout=self.timeout, ssl_context=self.ssl_context, setup=setup
            )
        return ClientTransport(self.client, timeout=self.timeout, setup=setup)

    @staticmethod
    def _spare(main: Transport, setup: Sequence[Command]) -> Transport:
        """A second connection like ``main``, waking the same waiters, quiet in the logs."""
        return Transport(
            main.address,
            timeout=main.timeout,
            ssl_context=main.ssl_context,
            setup=setup,
            signal=main.signal,
            reports=False,
        )

    @asynccontextmanager
    async def _running(
        self, name: str, transports: list[Transport | ClientTransport]
    ) -> AsyncIterator[list[Transport | ClientTransport]]:
        failed: Exception | None = None
        async with anyio.create_task_group() as tasks:
            try:
                for transport in transports:
                    await tasks.start(transport.run)
            except RedisConfigurationError as error:
                failed = unavailable(name, error)
                failed.__cause__ = error
            except Exception as error:
                failed = error
            else:
                try:
                    yield transports
                except Exception as error:
                    failed = error  # the block's own failure (a bus that cannot subscribe)
                finally:
                    tasks.cancel_scope.cancel()
            if failed is not None:
                tasks.cancel_scope.cancel()  # a transport that did start stops too
        # Raised here, outside the task group, so it is not wrapped in a group.
        if failed is not None:
            raise failed

    async def subscribe(self, channel: str) -> Subscription:
        """Subscribe to ``channel``: on a connection of its own (``url=``), or through
        the client's pub/sub. Returns once SUBSCRIBE is acknowledged (run it under a
        deadline).

        :raises RedisConnectionError: the subscription could not be made.
        """
        if self.address is not None:
            return await ConnectionSubscription.open(self.address, channel, self.ssl_context)
        return await ClientSubscription.open(self.client, channel)


def unavailable(name: str, error: BaseException) -> LayerUnavailableError:
    """What ``name``'s owner raises for ``error`` (raise it ``from error``)."""
    return LayerUnavailableError(name, str(error))


def check_replies(name: str, replies: list[object]) -> list[object]:
    """``replies``, unless Redis answered one of the commands with an error.

    :raises LayerUnavailableError: for the first error reply, with a
        :class:`RedisReplyError` as its cause (a :class:`RedisConfigurationError` for
        a refusal such as ``NOPERM``: see :func:`reply_error`).
    """
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise LayerUnavailableError(name, f"Redis answered: {reply}") from reply_error(reply)
    return replies
