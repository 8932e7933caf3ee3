"""``client=``: an existing ``redis.asyncio.Redis``-compatible client as a transport.

It gives the Redis layer the same interface as :class:`~._transport.Transport`. Each
batch becomes one non-transactional redis-py pipeline, run in the adapter's own task
group so batches overlap as the client's connection pool allows. At start it checks,
through the client, what a ``url=`` connection's set-up checks (a PING, then the
``setup`` commands): a refused login or database, or a server that cannot run the
scripts (fakeredis without its Lua extra), fails the start. redis-py runs on asyncio
only; under trio the adapter refuses to start and says to use ``url=``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import hiredis
from anyio.abc import TaskGroup, TaskStatus

from .._backend import Event, running_library
from ._connection import Command, check_setup
from ._errors import (
    RedisConfigurationError,
    RedisConnectionError,
    RedisError,
    client_error,
)
from ._transport import Deliver, IdleSignal, call

logger = logging.getLogger("layercache.redis.transport")


class ClientTransport:
    """Batches sent through a redis-py compatible asyncio client."""

    def __init__(self, client: Any, *, timeout: float, setup: Sequence[Command] = ()) -> None:
        self.client = client
        self.timeout = timeout
        self._setup = tuple(setup)
        self._task_group: TaskGroup | None = None
        self._in_flight = 0
        self.signal = IdleSignal()
        self.connected = True
        self.answered = 0
        """Batches answered so far (see ``Transport.answered``)."""
        self.new_event: Callable[[], Event] = anyio.Event

    def __repr__(self) -> str:
        return f"<ClientTransport {self.client!r}>"

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        if running_library() == "trio":
            raise TypeError(
                "client= takes a redis.asyncio client, which runs on asyncio only; under "
                "trio pass url='redis://...' instead"
            )
        pool = getattr(self.client, "connection_pool", None)
        if getattr(pool, "connection_kwargs", {}).get("decode_responses"):
            raise RedisConfigurationError(
                "the client decodes responses to str; layercache stores bytes: create it "
                "with decode_responses=False"
            )
        if not callable(getattr(self.client, "pipeline", None)):
            raise RedisConfigurationError(
                f"client= must be a redis.asyncio-compatible client; {self.client!r} has "
                "no pipeline()"
            )
        await self._probe()  # before the task group: what it raises stays unwrapped
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._task_group = None

    async def _probe(self) -> None:
        """What a ``url=`` connection's set-up checks, through the client: a PING (the
        login and the database) and the ``setup`` commands (loading the scripts).

        :raises RedisConfigurationError: refused for good (see :func:`check_setup`);
            an unreachable server only logs a warning.
        """
        commands = [("PING",), *self._setup]
        kind = type(self.client)
        where = f"client= ({kind.__module__}.{kind.__qualname__})"
        outcome: list[list[object] | RedisError] = []
        await self._execute_pipeline(commands, outcome.append, anyio.current_time() + self.timeout)
        replies = outcome[0]
        if isinstance(replies, RedisConfigurationError):
            raise replies
        if isinstance(replies, RedisError):
            logger.warning("%s: %s; will retry with each request", where, replies)
            return
        # The PING's reply proves nothing more: a refused login raised already.
        check_setup(where, self._setup, replies[1:])

    async def call(self, commands: Sequence[Command]) -> list[object]:
        """Send a batch and wait for its replies."""
        return await call(self, commands)

    @property
    def idle(self) -> bool:
        return not self._in_flight

    @property
    def hauling(self) -> bool:
        """Never: batches overlap as the client's pool allows (see ``Transport``)."""
        return False

    async def wait_idle(self) -> None:
        """Return once no batch is executing (see ``Transport.wait_idle``)."""
        await self.signal.wait(lambda: bool(self._in_flight))

    async def send(
        self, commands: Sequence[Command], deliver: Deliver, deadline: float | None = None
    ) -> None:
        task_group = self._task_group
        if task_group is None:
            deliver(RedisConnectionError("the client transport is not running"))
            return
        if deadline is None:
            deadline = anyio.current_time() + self.timeout
        self._in_flight += 1
        task_group.start_soon(self._execute, commands, deliver, deadline)

    async def _execute(
        self, commands: Sequence[Command], deliver: Deliver, deadline: float
    ) -> None:
        try:
            await self._execute_pipeline(commands, deliver, deadline)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self.signal.notify()

    async def _execute_pipeline(
        self, commands: Sequence[Command], deliver: Deliver, deadline: float
    ) -> None:
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                pipeline = self.client.pipeline(transaction=False)
                for command in commands:
                    pipeline.execute_command(*command)
                replies = await pipeline.execute(raise_on_error=False)
        except TimeoutError as error:
            self.connected = False
            deliver(RedisConnectionError(f"no reply within {self.timeout} s: {error}"))
        except Exception as error:  # redis-py's connection errors, OSError, ...
            self.connected = False
            deliver(client_error(error) or RedisConnectionError(f"{type(error).__name__}: {error}"))
        except BaseException:
            deliver(RedisConnectionError("the client transport stopped"))
            raise
        else:
            self.connected = True
            self.answered += 1
            deliver([_normalize(reply) for reply in replies])


_CODES = {"NoScriptError": "NOSCRIPT", "NoPermissionError": "NOPERM"}


def _normalize(reply: object) -> object:
    """Bring redis-py's parsed replies back to the raw RESP shapes hiredis gives."""
    if isinstance(reply, Exception):
        code = _CODES.get(type(reply).__name__)  # redis-py strips the error code
        if code is not None:
            return hiredis.ReplyError(f"{code} {reply}")
        return hiredis.ReplyError(str(reply))
    if reply is True:
        return b"OK"
    if isinstance(reply, tuple):
        return [_normalize(item) for item in reply]
    return reply
