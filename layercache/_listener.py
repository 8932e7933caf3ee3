"""The invalidation listener actor: the bridge between Redis pub/sub and the stack.

Owns: the subscription connection to the bus channel, a pipelined transport for
publishing, and the bus counters (sent, received, ignored, rejected by reason).

It reports itself started only once SUBSCRIBE is acknowledged, so a stack never runs
without hearing its peers. Each message from another stack is checked (size, format,
signature) and handed to ``apply`` (the stack's invalidation path, which fences its loads
and drops, or expires, the entries in its local layers synchronously, in this task); the
stack's own messages are ignored; bad ones are dropped, counted, and never stop the
listener.

Takes no requests over a channel: its tasks read the subscription. The write and
invalidation paths call :meth:`InvalidationListener.publish` (through the bus's health
guard) and :meth:`InvalidationListener.publish_commands` from the caller's task; the
publisher transport pipelines them. When the subscription is lost (server restart, network cut,
no answer to a keepalive PING) it is re-established with jittered back-off, and
``on_resubscribed`` clears the local layers: messages may have been missed meanwhile.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from ._bus import (
    BusMessage,
    RedisInvalidationBus,
    Rejected,
    decode,
    encode,
    origin_marker,
)
from ._count import WatchedCount
from ._exceptions import LayerUnavailableError
from ._redis._adapter import ClientTransport
from ._redis._connection import Command
from ._redis._endpoint import check_replies, unavailable
from ._redis._errors import RedisConfigurationError, RedisConnectionError, RedisError
from ._redis._subscription import Subscription
from ._redis._transport import Transport

logger = logging.getLogger("layercache.listener")

RESUBSCRIBE_FIRST = 0.05
RESUBSCRIBE_MAX = 5.0
MAX_DEFERRED = 1_000
"""Messages kept for publishing later at most; past that they become one ``clear``
(peers drop everything: coarser, never wrong)."""


class InvalidationListener:
    def __init__(
        self,
        bus: RedisInvalidationBus,
        origin: str,
        *,
        apply: Callable[[BusMessage], None],
        on_resubscribed: Callable[[], None],
        start_disconnected: bool,
    ) -> None:
        self.bus = bus
        self.origin = origin
        self._marker = origin_marker(origin)
        self._apply = apply
        self._on_resubscribed = on_resubscribed
        self._start_disconnected = start_disconnected
        self._publisher: Transport | ClientTransport | None = None
        self.subscribed = False
        self.sent = 0
        self.carried_sent = 0
        """Of ``sent``, how many went out with the change they announce (the Redis
        layer's batch) rather than on the bus's own connection."""
        self.received = WatchedCount()
        """Messages from other stacks applied (awaitable: see :class:`WatchedCount`)."""
        self.ignored = 0
        self.rejected: Counter[str] = Counter()
        self.resubscriptions = WatchedCount()
        self.deferred = 0
        """Messages that could not be published with their change and were kept for
        later (see :meth:`publish_later`)."""
        self._later: list[BusMessage] = []
        self._later_added: anyio.Event | None = None
        self._started_once = False

    def __repr__(self) -> str:
        state = "subscribed" if self.subscribed else "unsubscribed"
        return (
            f"<InvalidationListener {self.bus.channel!r} {state} sent={self.sent} "
            f"received={self.received} rejected={sum(self.rejected.values())}>"
        )

    @property
    def name(self) -> str:
        return "invalidation bus"

    # -- the actor ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        async with self.bus.endpoint.transport(self.name) as publisher:
            self._publisher = publisher
            refused: LayerUnavailableError | None = None
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._publish_deferred)
                    try:
                        await self._listen(task_status)
                    except LayerUnavailableError as error:
                        refused = error  # raised below, not wrapped in a group
                    tasks.cancel_scope.cancel()
            finally:
                self._publisher = None
            if refused is not None:
                raise refused

    async def _listen(self, task_status: TaskStatus[None]) -> None:
        # After a restart (the supervisor runs us again) the stack is already running:
        # nothing may fail its start now, and the first subscription is a re-subscription.
        started = self._started_once
        if started:
            task_status.started()
        delay = RESUBSCRIBE_FIRST
        while True:
            try:
                connection = await self._subscribe()
            except RedisConfigurationError as error:
                if not started:
                    raise unavailable(self.name, error) from error
                logger.error("cannot resubscribe to %r: %s", self.bus.channel, error)
            except RedisConnectionError as error:
                if not started and not self._start_disconnected:
                    raise unavailable(self.name, error) from error
                if not started:
                    logger.warning("bus unavailable (%s); will keep trying", error)
                    started = self._started_once = True
                    task_status.started()
            else:
                delay = RESUBSCRIBE_FIRST
                self.subscribed = True
                if not started:
                    started = self._started_once = True
                    task_status.started()
                else:
                    self.resubscriptions.add()
                    logger.warning("resubscribed to %r: clearing local layers", self.bus.channel)
                    self._on_resubscribed()
                try:
                    await self._serve(connection)
                finally:
                    self.subscribed = False
                    await connection.aclose()
            await anyio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, RESUBSCRIBE_MAX)

    async def _subscribe(self) -> Subscription:
        bus = self.bus
        try:
            with anyio.fail_after(bus.timeout):
                return await bus.endpoint.subscribe(bus.channel)
        except TimeoutError as error:
            raise RedisConnectionError(
                f"subscribing to {bus.channel!r} timed out after {bus.timeout} s"
            ) from error

    async def _serve(self, subscription: Subscription) -> None:
        """Handle messages until the subscription breaks or stops answering PINGs."""
        async with anyio.create_task_group() as tasks:
            heard = [0]  # a count, not a time: no clock read per message

            async def keep_alive() -> None:
                while True:
                    await anyio.sleep(self.bus.keepalive)
                    asked = heard[0]
                    try:
                        await subscription.ping()
                    except RedisConnectionError:
                        tasks.cancel_scope.cancel()
                        return
                    await anyio.sleep(self.bus.timeout)
                    if heard[0] == asked:
                        logger.warning("the bus subscription stopped answering")
                        tasks.cancel_scope.cancel()
                        return

            tasks.start_soon(keep_alive)

            def heard_now() -> None:
                heard[0] += 1

            try:
                await subscription.serve(heard_now, self.handle)
            except RedisConnectionError as error:
                logger.warning("lost the bus subscription: %s", error)
            tasks.cancel_scope.cancel()

    # -- handlers ----------------------------------------------------------------------

    def handle(self, payload: object) -> None:
        """Check one message from the channel and apply it (synchronous)."""
        try:
            message = decode(payload, self.bus.secret, self._marker)
        except Rejected as rejection:
            self.rejected[rejection.reason] += 1
            logger.debug("dropped a bus message: %s", rejection.reason)
            return
        if message is None or message.origin == self.origin:
            self.ignored += 1  # our own, heard back (None: recognised before decoding)
            return
        self.received.add()
        try:
            self._apply(message)
        except Exception:  # a bug in applying must not stop the listener
            logger.exception("applying a bus message failed")

    async def publish(self, messages: Sequence[BusMessage]) -> None:
        """Publish ``messages`` in one round trip.

        :raises LayerUnavailableError: Redis could not take them.
        """
        publisher = self._publisher
        if publisher is None:
            raise LayerUnavailableError(self.name, "the bus is not running")
        commands = self.publish_commands(messages)
        try:
            # The transport fails the batch at its deadline (the bus's timeout): no
            # cancel scope of our own needed.
            replies = await publisher.call(commands)
        except RedisError as error:
            raise unavailable(self.name, error) from error
        check_replies(self.name, replies)
        self.sent += len(messages)

    def publish_later(self, messages: Sequence[BusMessage]) -> None:
        """Keep ``messages`` for the actor to publish as soon as Redis takes them: the
        announcement of a change whose outcome is unknown must reach the peers even
        when the bus cannot take it now. Bounded by :data:`MAX_DEFERRED`."""
        self.deferred += len(messages)
        self._keep(messages)
        added, self._later_added = self._later_added, None
        if added is not None:
            added.set()

    def _keep(self, messages: Sequence[BusMessage], first: bool = False) -> None:
        kept = [*messages, *self._later] if first else [*self._later, *messages]
        if len(kept) > MAX_DEFERRED:
            logger.warning("too many bus messages waiting: telling the peers to clear instead")
            kept = [BusMessage(self.origin, "clear")]
        self._later = kept

    async def _publish_deferred(self) -> None:
        """Publish what :meth:`publish_later` kept, retrying with jittered back-off
        until Redis takes it."""
        delay = RESUBSCRIBE_FIRST
        try:
            while True:
                while not self._later:
                    added = self._later_added = anyio.Event()
                    await added.wait()
                if await self._publish_kept():
                    delay = RESUBSCRIBE_FIRST
                else:
                    await anyio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, RESUBSCRIBE_MAX)
        finally:
            if self._later:
                logger.warning(
                    "%d bus messages were never published: peers keep what they announced "
                    "until their memory TTL",
                    len(self._later),
                )

    async def _publish_kept(self) -> bool:
        messages, self._later = self._later, []
        sent = False
        try:
            await self.publish(messages)
            sent = True
        except LayerUnavailableError as error:
            logger.debug("could not publish %d kept bus messages: %s", len(messages), error)
        except Exception:  # a bug here must not take the subscription down
            logger.exception("publishing kept bus messages failed")
        finally:
            if not sent:
                self._keep(messages, first=True)
        return sent

    def publish_commands(self, messages: Sequence[BusMessage]) -> list[Command]:
        """The PUBLISH commands for ``messages``: what :meth:`publish` sends, and what a
        Redis layer on the bus's server sends right after the change they announce."""
        channel, secret = self.bus.channel, self.bus.secret
        return [("PUBLISH", channel, encode(message, secret)) for message in messages]

    def carried(self, count: int) -> None:
        """``count`` messages were published along with a change (see the stack)."""
        self.sent += count
        self.carried_sent += count
