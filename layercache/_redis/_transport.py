"""A pipelined transport over one Redis connection.

The owner (a layer actor) is the only writer: :meth:`Transport.send` packs a batch of
commands, records it as pending and writes it. The transport's reader task parses
replies in order and hands each batch its replies through the batch's ``deliver``
callback. Callers wait on whatever ``deliver`` fills, so a cancelled caller cannot leave
a reply unread or desynchronise the connection. One exception, on trio's direct
connections: a caller that sent the only pending batch may read the replies itself
(:meth:`Transport.read_own`) while the reader stands by, and hands the reading back
however it ends.

Deadlines: every batch has one (``timeout`` seconds after it was sent). If the oldest
pending batch passes it with no reply, the connection is taken as dead: every pending
batch fails with :class:`RedisConnectionError`, the connection is closed, and the
transport reconnects in the background with jittered exponential back-off. The reader
watches the deadlines itself: it reads under a cancel scope whose deadline is never later
than any pending batch's. A send only moves it earlier, which a stream of requests
rarely needs; when it fires, the reader checks whether a batch really is overdue and
otherwise reads on under a fresh scope. So a request costs no timer of its own and no
watchdog task to wake.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from .._backend import Event, event_type
from .._clock import Clock, deadline_clock
from ._address import RedisAddress
from ._connection import Command, Connection, pack
from ._errors import RedisConfigurationError, RedisConnectionError, RedisError

logger = logging.getLogger("layercache.redis.transport")

Deliver = Callable[[list[object] | RedisError], None]
"""Receives a batch's replies in order (error replies as values), or the error that
ended the connection before they came."""

RECONNECT_FIRST = 0.05
RECONNECT_MAX = 5.0
LARGE = 1024 * 1024
"""Bytes in one batch or one reply from which a transfer counts as large
(:attr:`Transport.hauling`): worth another connection for the requests behind it."""


class IdleSignal:
    """Wakes the tasks waiting for a transport to have nothing in flight."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, busy: Callable[[], bool]) -> None:
        while busy():
            if self._event.is_set():
                self._event = anyio.Event()
            await self._event.wait()


class _Batch:
    __slots__ = ("count", "deadline", "deliver", "large", "replies")

    def __init__(self, count: int, deliver: Deliver, deadline: float, large: bool) -> None:
        self.count = count
        self.deliver = deliver
        self.deadline = deadline
        self.large = large
        self.replies: list[object] = []


class Transport:
    """Pipelined batches over one connection to ``address``."""

    def __init__(
        self,
        address: RedisAddress,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        setup: Sequence[Command] = (),
        signal: IdleSignal | None = None,
        reports: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._setup = tuple(setup)
        self._connection: Connection | None = None
        self._pending: deque[_Batch] = deque()
        self._read_scope: anyio.CancelScope | None = None
        self._idle_scope: anyio.CancelScope | None = None
        """Set while the reader waits on an idle connection (no batch pending): a caller
        that just sent the only batch may cancel it and read the replies itself."""
        self._handed: Event | None = None
        """Set while a caller reads; the reader stands by until it is set."""
        self._standby = False
        """The reader is standing by (or about to stop): it does not touch the socket."""
        self.answered = 0
        """Batches answered so far: a count, so the layer can tell that what it waited
        behind was answered (a long transfer) rather than failed."""
        self._writing: anyio.Event | None = None
        """Set while a batch the socket did not take at once is being written."""
        self._connected = anyio.Event()
        self.signal = signal if signal is not None else IdleSignal()
        """Notified when the last pending batch is answered, and while a large reply
        comes in: several transports may share one (see ``Lanes``)."""
        self._large = 0
        """Pending batches over :data:`LARGE` bytes."""
        self._reports = reports
        """Log losses and refusals at their level; a spare connection (see ``Lanes``)
        logs them at DEBUG only: the main connection reports the same server."""
        # The loop's clock and event class, resolved once the loop runs (see run()).
        self.now: Clock = anyio.current_time
        self.new_event: Callable[[], Event] = anyio.Event
        self.connects = 0
        self.disconnects = 0
        self.failure: RedisError | None = None
        """Why the last attempt to connect failed; None once one succeeds."""
        self._refusal = ""

    def __repr__(self) -> str:
        state = "connected" if self._connection is not None else "disconnected"
        return f"<Transport {self.address.display()} {state} pending={len(self._pending)}>"

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def idle(self) -> bool:
        """No batch awaits replies (so everything written so far has left the socket)."""
        return not self._pending

    @property
    def hauling(self) -> bool:
        """A large transfer is under way: a pending batch of over :data:`LARGE` bytes,
        or a reply that has brought that much and is not complete yet. Requests sent
        now would wait for it (replies come in order)."""
        if self._large:
            return True
        connection = self._connection
        return connection is not None and connection.unfinished > LARGE

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Connect, then read replies and reconnect until cancelled.

        A server that refuses the configuration (AUTH, SELECT, a ``setup`` command it
        lacks) at the first attempt fails the start with
        :class:`RedisConfigurationError`; an unreachable one does not: the transport
        starts disconnected and keeps trying in the background. A later refusal (a
        password or ACL change) is logged as an error once, and the reconnects go on.
        """
        self.now, self.new_event = deadline_clock(), event_type()
        try:
            await self._connect()
        except RedisConnectionError as error:
            self._report(logging.WARNING, "%s; will retry in the background", error)
        task_status.started()
        delay = RECONNECT_FIRST
        try:
            while True:
                connection = self._connection
                if connection is None:
                    # Full jitter: instances that lost one server do not return in step.
                    await anyio.sleep(random.uniform(0, delay))
                    delay = min(delay * 2, RECONNECT_MAX)
                    try:
                        await self._connect()
                    except RedisConfigurationError as error:
                        self._refused(error)
                    except RedisError as error:
                        logger.debug("reconnect to %s failed: %s", self.address.display(), error)
                    continue
                delay = RECONNECT_FIRST
                await self._serve(connection)
        finally:
            connection = self._connection
            self._connection = None
            self._fail_pending(RedisConnectionError("the transport stopped"))
            if connection is not None:
                await connection.aclose()

    async def _connect(self) -> None:
        """Open a connection; a failure is kept for the requests that find none."""
        try:
            with anyio.fail_after(self.timeout):
                connection = await Connection.open(
                    self.address,
                    ssl_context=self.ssl_context,
                    setup=self._setup,
                    direct_writes=True,
                )
        except TimeoutError as error:
            address = self.address
            self.failure = RedisConnectionError(
                f"connecting to {address.display()} timed out after {self.timeout} s"
                + address.tls_hint()
            )
            raise self.failure from error
        except RedisError as error:
            self.failure = error
            raise
        self.failure = None
        self._refusal = ""
        self._connection = connection
        self._connected.set()
        self.connects += 1
        if self.connects > 1:
            self._report(logging.INFO, "reconnected to %s", self.address.display())

    def _report(self, level: int, message: str, *args: object) -> None:
        logger.log(level if self._reports else logging.DEBUG, message, *args)

    def _refused(self, error: RedisConfigurationError) -> None:
        """A reconnect refused for good (a password or ACL changed): logged once per
        reason as the configuration error it is; requests fail with it meanwhile."""
        if str(error) != self._refusal:
            self._refusal = str(error)
            self._report(
                logging.ERROR,
                "%s: a configuration error; retrying in the background until it is fixed",
                error,
            )

    def _not_connected(self) -> RedisError:
        """The error for a request that finds no connection: why the last attempt to
        connect failed, if it did (a configuration error stays one)."""
        where = f"not connected to {self.address.display()}"
        failure = self.failure
        if isinstance(failure, RedisConfigurationError):
            return RedisConfigurationError(f"{where}: {failure}")
        return RedisConnectionError(f"{where}: {failure}" if failure is not None else where)

    async def wait_connected(self) -> None:
        """Return once a connection is up (at once if it is)."""
        while self._connection is None:
            await self._connected.wait()

    async def wait_idle(self) -> None:
        """Return once no batch awaits its replies.

        The layer actor waits here before sending the next batch: while a round trip
        is under way, requests gather in its inbox and go out together after it, so a
        busy layer costs about one round trip per batch and an idle one adds no delay.
        """
        await self.signal.wait(lambda: bool(self._pending))

    async def send(
        self, commands: Sequence[Command], deliver: Deliver, deadline: float | None = None
    ) -> None:
        """Write ``commands`` as one batch; ``deliver`` gets their replies later.

        ``deadline`` (on ``anyio.current_time()``; default: ``timeout`` from now) is when
        the batch's callers give up: if no reply has come by then, the connection is
        taken as dead and the batch fails.

        Never raises for the connection's sake: a batch that cannot be sent is
        delivered the error at once. Safe from any number of tasks. Usually the whole
        batch goes into the socket at once, with no await at all; when the socket takes
        only part of it, the rest is written shielded from the caller's cancellation (a
        command cut in half would desynchronise the connection) but bounded by the
        deadline, other writers waiting their turn; a write that does not finish by
        then takes the connection down with it.
        """
        now = self.now()
        if deadline is None:
            deadline = now + self.timeout
        data = pack(commands)  # before anything is queued: a bad command queues nothing
        while self._writing is not None:  # another batch is still going out
            await self._writing.wait()
            now = self.now()
        connection = self._connection
        if connection is None:
            deliver(self._not_connected())
            return
        if deadline <= now:
            # Its callers gave up while it waited its turn: sending it would only make
            # the reader take a healthy connection for a dead one.
            deliver(RedisConnectionError(f"no turn to write to {self.address.display()} in time"))
            return
        large = len(data) > LARGE
        self._large += large
        self._pending.append(_Batch(len(commands), deliver, deadline, large))
        scope = self._read_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline
        try:
            sent = connection.send_nowait(data)
        except RedisConnectionError as error:
            await self._break(connection, error)
            return
        if sent < len(data):
            await self._send_rest(connection, data[sent:])

    async def _send_rest(self, connection: Connection, rest: bytes) -> None:
        writing = self._writing = anyio.Event()
        error: RedisConnectionError | None = None
        try:
            # The timeout bounds waiting for the socket, not a write that is moving: a
            # large value may take longer to go out, as long as bytes keep going.
            with anyio.CancelScope(shield=True):
                try:
                    await connection.send_rest(rest, stalled=self.timeout)
                except RedisConnectionError as failure:
                    error = failure
        finally:
            self._writing = None
            writing.set()
        if error is not None and self._connection is connection:
            await self._break(connection, error)

    async def call(self, commands: Sequence[Command]) -> list[object]:
        """Send a batch and wait for its replies (for callers that can simply wait)."""
        return await call(self, commands)

    async def _serve(self, connection: Connection) -> None:
        """Hand replies to their batches, in order, until the connection breaks or a
        batch outlives its deadline."""
        while self._connection is connection:
            pending = self._pending
            first = min((batch.deadline for batch in pending), default=math.inf)
            progress = connection.progress()
            with anyio.CancelScope(deadline=first) as scope:
                self._read_scope = scope
                try:
                    await self._read(connection)
                finally:
                    self._read_scope = None
            if not scope.cancelled_caught:
                return  # the connection broke
            now = anyio.current_time()
            overdue = [batch for batch in self._pending if batch.deadline <= now]
            if overdue and connection.progress() != progress:
                # Bytes moved meanwhile (replies come in order, so for the oldest
                # batch): a large transfer under way, not a server that stopped
                # answering. The deadline bounds waiting, not moving: one more timeout.
                for batch in overdue:
                    batch.deadline = now + self.timeout
            elif overdue:
                error = RedisConnectionError(
                    f"no reply from {self.address.display()} within {self.timeout} s"
                )
                await self._break(connection, error)
                return
            # The batch the deadline was for has been answered: watch the others.

    async def _read(self, connection: Connection) -> None:
        if connection.pushes:
            # asyncio: replies are handed out by the event loop's callback as they
            # arrive; this task only waits for the end.
            connection.on_replies = functools.partial(self._hand_out, connection)
            await self._break(connection, await connection.wait_lost())
            return
        while self._connection is connection:
            if self._handed is not None:
                await self._stand_by()
            elif self._pending:
                if not await self._read_replies(connection):
                    return
            else:
                # Idle: watch for the server closing, unless a caller takes over.
                with anyio.CancelScope() as idle:
                    self._idle_scope = idle
                    try:
                        if not await self._read_replies(connection):
                            return
                    finally:
                        self._idle_scope = None

    async def _stand_by(self) -> None:
        """Wait while callers read (see :meth:`read_own`); a caller may take the read
        over from one that is done before this task has run again."""
        self._standby = True
        try:
            while (handed := self._handed) is not None:
                await handed.wait()
        finally:
            self._standby = False

    async def _read_replies(self, connection: Connection) -> bool:
        """Read what arrives next and hand it out; False once the connection broke."""
        try:
            replies = await connection.receive()
        except RedisConnectionError as error:
            await self._break(connection, error)
            return False
        broken = self._hand_out(connection, replies)
        if broken is not None:
            await self._break(connection, broken)
            return False
        return True

    async def read_own(self, done: Callable[[], bool]) -> bool:
        """Read the replies to the batch just sent in the calling task, until ``done()``
        says it was delivered: on trio's direct connections this spares the reader
        task's wake-up and the hand-over to the caller (one scheduler pass of two).

        Only when the reader is not reading (it waits on an idle connection, or stands
        by after another caller): it is told to stand by, so one task at a time reads
        the socket. Otherwise this returns at once and the reader delivers as usual.
        However this ends, cancelled included, the reading goes back to the reader,
        with whatever was parsed so far kept by the connection's parser. Deadlines stay
        the reader's: it breaks the connection of an overdue batch while standing by.
        True if this task did the reading.
        """
        connection = self._connection
        if (
            done()
            or connection is None
            or not connection.reads_directly
            or self._handed is not None
        ):
            return False
        idle = self._idle_scope
        if idle is None and not self._standby:
            return False  # the reader is reading
        handed = self._handed = self.new_event()
        if idle is not None:
            idle.cancel()  # it leaves its wait at once (trio), then stands by
        try:
            while not done() and self._connection is connection:
                if not await self._read_replies(connection):
                    break
        finally:
            self._handed = None
            handed.set()
        return True

    def _hand_out(
        self, connection: Connection, replies: list[object]
    ) -> RedisConnectionError | None:
        """Give each batch its replies, in order; the error if a reply has no batch."""
        if self._connection is not connection:
            return None  # given up: its batches were failed already
        if not replies:
            if connection.unfinished > LARGE:
                self.signal.notify()  # hauling: whoever waits for this lane can go elsewhere
            return None
        pending = self._pending
        for reply in replies:
            if not pending:
                error = RedisConnectionError("reply to no request")
                if connection.pushes:
                    connection.abort(error)
                return error
            batch = pending[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                pending.popleft()
                self._large -= batch.large
                self.answered += 1
                if not pending:
                    self.signal.notify()
                batch.deliver(batch.replies)
        return None

    async def _break(self, connection: Connection, error: RedisConnectionError) -> None:
        if self._connection is not connection:
            return
        self._report(logging.WARNING, "lost connection to %s: %s", self.address.display(), error)
        self._connection = None
        self._connected = anyio.Event()
        self.disconnects += 1
        self._fail_pending(error)
        await connection.aclose()

    def _fail_pending(self, error: RedisError) -> None:
        pending, self._pending = self._pending, deque()
        self._large = 0
        self.signal.notify()
        for batch in pending:
            batch.deliver(error)


class Sender(Protocol):
    new_event: Callable[[], Event]

    async def send(
        self, commands: Sequence[Command], deliver: Deliver, deadline: float | None = None
    ) -> None: ...


async def call(sender: Sender, commands: Sequence[Command]) -> list[object]:
    """Send a batch through ``sender`` and wait for its replies (raises on a lost one)."""
    done = sender.new_event()
    result: list[list[object] | RedisError] = []

    def deliver(replies: list[object] | RedisError) -> None:
        result.append(replies)
        done.set()

    await sender.send(commands, deliver)
    await done.wait()
    outcome = result[0]
    if isinstance(outcome, RedisError):
        raise outcome
    return outcome
