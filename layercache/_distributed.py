"""The distributed single-flight actor: one fetch per key across processes.

Owns: a Redis connection of its own (``url=``; or an adapted ``redis.asyncio`` client,
``client=``), the locks this stack holds, which it renews every ``lease / 3`` seconds
while their loads run, and the lock counters.

The protocol for a key that every layer missed, :meth:`RedisSingleFlightCoordinator.load_once`,
run by the load path (the in-process single-flight in front makes it one attempt per
process and key):

1. ``ACQUIRE``: ``SET <prefix>l:<key> <random token> NX PX <lease>``, and the key goes
   into the load's tag sets so a tag invalidation finds the lock.
2. Taken: read the value once more (the previous holder may have just finished), else
   fetch, and store the result with a ``WRITE`` that checks the token: a write, delete,
   tag invalidation or clear of the key meanwhile deleted the lock, and the stale result
   is not stored (the callers still get it). Then ``RELEASE`` (compare-and-delete).
3. Not taken: wait. Read the value with jittered exponential back-off, trying the lock
   again each time. A holder that dies stops renewing; when its lease expires the next
   ``SET NX`` lets exactly one waiter through, never the herd. A wait lasts at most
   ``wait_timeout``; one that times out starts over once (a fresh wait, the lock tried
   again) instead of fetching; after that the caller gets
   :class:`~layercache.LayerUnavailableError`, or in graceful mode the fetch runs here.

Redis unavailable: the coordinator's health guard skips it in graceful mode (the load
falls back to single-flight per process) or raises ``LayerUnavailableError`` (strict).

The actor's task renews the held locks and gives back orphaned ones; it takes no
requests over a channel. The loads call ``acquire``/``release`` from their own tasks
(one thread: the held-lock map is never read half-changed).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import hiredis
from anyio.abc import TaskStatus

from ._exceptions import LayerUnavailableError
from ._health import LayerHealth, Skipped
from ._redis._adapter import ClientTransport
from ._redis._address import RedisAddress
from ._redis._connection import Command
from ._redis._endpoint import RedisEndpoint, check_replies, unavailable
from ._redis._errors import RedisError
from ._redis._scripts import ACQUIRE, LOCK_SCRIPTS, RELEASE, RENEW, loading, run_scripts
from ._redis._transport import Transport
from ._redis_layer import DEFAULT_TIMEOUT, KeySpace, RedisLayer
from ._statistics import CoordinatorStatistics
from ._validation import check_duration

logger = logging.getLogger("layercache.distributed")

T = TypeVar("T")

POLL_FIRST = 0.005
"""Seconds before a waiter's first look at the value; doubled after each look."""
POLL_MAX = 0.25
"""The longest pause between two looks."""
ORPHAN_RETRY_FIRST = 0.05
ORPHAN_RETRY_MAX = 5.0
MAX_ORPHANS = 10_000


@dataclass(frozen=True, slots=True)
class _Lease:
    """A lock this stack holds: its token, and what RELEASE and RENEW need to know."""

    token: str
    key: str
    value: str
    """The Redis name of the key's value."""
    tag_sets: list[str]
    """The Redis names of the load's tag sets (ACQUIRE put the key in them)."""

    def release(self, lock: str) -> Command:
        # EVAL, not EVALSHA: sent without waiting for the reply, so a NOSCRIPT (a
        # restarted server, a client= connection) could not be retried.
        return RELEASE.eval([lock, self.value, *self.tag_sets], [self.token, self.key])


class Wait:
    """A waiter's schedule: jittered exponential back-off, and a time limit it may
    renew once (the waiter starts over instead of fetching).

    The renewed limit never ends before ``lease + timeout`` from the start: by then a
    dead holder's lock has expired and one waiter has taken over, so no waiter gives up
    on a holder that is merely dead rather than slow.
    """

    __slots__ = ("_delay", "_lease", "_started", "_timeout", "deadline", "renewed")

    def __init__(self, now: float, timeout: float, lease: float = 0.0) -> None:
        self._timeout = timeout
        self._lease = lease
        self._started = now
        self._delay = POLL_FIRST
        self.deadline = now + timeout
        self.renewed = False

    def pause(self) -> float:
        """Seconds until the next look (full jitter over the upper half)."""
        delay = self._delay
        self._delay = min(delay * 2, POLL_MAX)
        return random.uniform(delay / 2, delay)

    def given_up(self, now: float) -> bool:
        """True once the wait has run out twice; the first time it starts over."""
        if now < self.deadline:
            return False
        if self.renewed:
            return True
        self.renewed = True
        self.deadline = max(now + self._timeout, self._started + self._lease + self._timeout)
        self._delay = POLL_FIRST
        return False


class RedisSingleFlightCoordinator:
    """Single-flight across processes, for ``CacheStack(single_flight_coordinator=)``.

    Concurrent misses of one key in every process sharing the Redis run the fetcher once
    in total. The locks live next to the values, under the prefix of the stack's
    (slowest) :class:`~layercache.RedisLayer`, so the coordinator must use the same
    Redis server and database as that layer.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` (asyncio and trio).
    :param client: instead of ``url``, a ``redis.asyncio``-compatible client
        (``decode_responses=False``); asyncio only, a ``TypeError`` under trio.
    :param lease: seconds a lock lives without renewal. The holder renews it every
        ``lease / 3`` while the fetch runs; if the holder dies, one waiter takes over
        this long after the last renewal.
    :param wait_timeout: seconds a waiter waits for the value before it starts over
        (once: it tries the lock again and waits another ``wait_timeout``, or until
        ``lease + wait_timeout`` after it began if that is later, so that a dead
        holder's lock has expired and been taken over by then). If that runs out too,
        the call raises :class:`~layercache.LayerUnavailableError`, or with graceful
        degradation fetches by itself.
    :param timeout: seconds any single Redis request may take.
    :param ssl_context: for ``rediss://``, a custom ``ssl.SSLContext``.
    :raises TypeError, ValueError: for bad arguments (checked here, without I/O).
    """

    name = "single-flight coordinator"

    def __init__(
        self,
        url: str | None = None,
        client: Any = None,
        lease: float = 30.0,
        wait_timeout: float = 5.0,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: Any = None,
    ) -> None:
        self.endpoint = RedisEndpoint(
            "RedisSingleFlightCoordinator", url, client, timeout=timeout, ssl_context=ssl_context
        )
        self.address: RedisAddress | None = self.endpoint.address
        self.client = client
        self.timeout = self.endpoint.timeout
        self.lease = check_duration(lease, "lease")
        self.wait_timeout = check_duration(wait_timeout, "wait_timeout")
        self._keys: KeySpace | None = None
        self._transport: Transport | ClientTransport | None = None
        self._held: dict[str, _Lease] = {}
        """Lock name → lease, for the locks to renew."""
        self._orphans: dict[str, _Lease] = {}
        """Locks that may have been taken without our knowing: to release."""
        self._orphaned: anyio.Event | None = None
        """Set when ``_orphans`` gets one (an Event of the running actor's loop)."""
        self.acquired = self.waits = self.takeovers = self.timeouts = self.lost = 0
        self.refreshes_elsewhere = 0

    def __repr__(self) -> str:
        where = self.endpoint.display()
        return f"<RedisSingleFlightCoordinator {where} lease={self.lease} held={len(self._held)}>"

    def attach(self, keys: KeySpace) -> None:
        """Internal (the stack's).

        Bind to a stack, whose Redis layer's ``keys`` name the locks."""
        if self._keys is not None:
            raise RuntimeError("this single-flight coordinator is already in use by another stack")
        self._keys = keys

    def detach(self) -> None:
        """Internal (the stack's).

        Unbind from the stack that exited (it may then serve another)."""
        self._keys = None
        self._held.clear()
        self._orphans.clear()
        self._orphaned = None

    # -- the actor ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Internal (the stack's).

        The actor: connect (a refused login fails the stack's start), then renew the
        held locks until cancelled; on the way out, give back any still held."""
        async with self.endpoint.transport(self.name, loading(LOCK_SCRIPTS)) as transport:
            self._transport = transport
            task_status.started()
            try:
                async with anyio.create_task_group() as work:
                    work.start_soon(self._release_orphans, transport)
                    await self._renew_forever()
            finally:
                # Loads cancelled with the stack may not have released theirs.
                held, self._held = list(self._held.items()), {}
                await self._send_quietly([lease.release(lock) for lock, lease in held])
                self._transport = None

    async def _renew_forever(self) -> None:
        """Extend every held lock (and its load's tag sets) each ``lease / 3``: a live
        holder never loses its lock to a takeover, a dead one stops renewing and loses
        it after ``lease``."""
        lease_ms = _milliseconds(self.lease)
        while True:
            await anyio.sleep(self.lease / 3)
            held = list(self._held.items())
            if not held:
                continue
            commands = [
                RENEW.evalsha([lock, *lease.tag_sets], [lease_ms, lease.token])
                for lock, lease in held
            ]
            try:
                renewed = await self._call(commands)
            except LayerUnavailableError as error:
                logger.warning("could not renew %d single-flight locks: %s", len(held), error)
                continue
            for (lock, lease), ok in zip(held, renewed, strict=True):
                if ok != 1 and self._held.get(lock) is lease:
                    # A change to the key (or an expiry) took it: the holder's guarded
                    # write will find out and store nothing.
                    del self._held[lock]
                    logger.info("single-flight lock %r was taken away during its load", lock)

    async def _release_orphans(self, transport: Transport | ClientTransport) -> None:
        """Give back locks whose ACQUIRE reply was lost: they may have been taken, and
        nobody would renew or release them. Retried once the connection is back."""
        delay = ORPHAN_RETRY_FIRST
        while True:
            orphaned = self._orphaned = anyio.Event()
            if not self._orphans:
                await orphaned.wait()
            while self._orphans:
                if transport.connected:
                    orphans, self._orphans = self._orphans, {}
                    await self._send_quietly(
                        [lease.release(lock) for lock, lease in orphans.items()],
                        retry=orphans,
                    )
                    if not self._orphans:
                        delay = ORPHAN_RETRY_FIRST
                        break
                await anyio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, ORPHAN_RETRY_MAX)

    def _orphan(self, lock: str, lease: _Lease) -> None:
        if len(self._orphans) < MAX_ORPHANS:  # beyond that, their leases expire them
            self._orphans[lock] = lease
        if self._orphaned is not None:
            self._orphaned.set()

    # -- the protocol, run by a load -----------------------------------------------------

    async def load_once(
        self,
        key: str,
        tags: Iterable[str],
        guard: LayerHealth,
        read: Callable[[], Awaitable[T | None]],
        fetch: Callable[[str | None], Awaitable[T]],
    ) -> T:
        """Fetch under ``key``'s lock, or wait for the process that holds it: one fetch
        across every process sharing the Redis layer.

        ``read`` looks at the Redis layers (None: not there), ``fetch(token)`` fetches
        and stores (under the lock ``token``, or None without one); ``guard`` is this
        coordinator's health guard. Degraded (skipped), or past the wait in graceful
        mode, the load fetches here.
        """
        wait: Wait | None = None
        while True:
            token = await guard.call(self.acquire, key, tags)
            if isinstance(token, Skipped):
                return await fetch(None)  # degraded: single-flight per process
            if token is not None:
                try:
                    # The previous holder may have stored the value just before we took
                    # the lock: look once more before fetching.
                    found = await read()
                    if found is not None:
                        return found
                    if wait is not None:
                        self.takeovers += 1
                    return await fetch(token)
                finally:
                    await self.release(key, token)
            if wait is None:
                wait = self.waiting()
            await anyio.sleep(wait.pause())
            found = await read()
            if found is not None:
                return found
            if wait.given_up(anyio.current_time()):
                return await self._gave_up(key, guard, fetch)

    async def refresh_once(
        self,
        key: str,
        tags: Iterable[str],
        guard: LayerHealth,
        read: Callable[[], Awaitable[T | None]],
        fetch: Callable[[str | None], Awaitable[T]],
    ) -> T | None:
        """A background refresh: fetch under ``key``'s lock if it is free, never wait
        for it. None if another process holds it (it refreshes; this one goes on
        serving what it has). As :meth:`load_once` otherwise."""
        token = await guard.call(self.acquire, key, tags)
        if isinstance(token, Skipped):
            return await fetch(None)
        if token is None:
            self.refreshes_elsewhere += 1
            return None
        try:
            found = await read()  # refreshed just before we took the lock?
            return found if found is not None else await fetch(token)
        finally:
            await self.release(key, token)

    async def _gave_up(
        self, key: str, guard: LayerHealth, fetch: Callable[[str | None], Awaitable[T]]
    ) -> T:
        self.timeouts += 1
        message = (
            f"the load of {key!r} held by another process did not finish "
            f"within the wait (wait_timeout={self.wait_timeout} s, twice)"
        )
        if not guard.graceful:
            raise LayerUnavailableError(self.name, message)
        logger.warning("%s; fetching here", message)
        return await fetch(None)

    async def check_same_server(self, layer: RedisLayer) -> None:
        """Internal (the stack's).

        Refuse a coordinator whose Redis is not ``layer``'s: its locks would be
        invisible to the layer's guarded writes, and nothing would ever be stored.
        Skipped, with a warning, when either cannot reach Redis now."""
        token = secrets.token_hex(16)
        name = f"{layer.keys.locks}\x00probe:{token}"  # no key's lock: random, and marked
        try:
            await self.mark(name, token)
            found = await layer.take(name)
        except LayerUnavailableError as error:
            logger.warning(
                "could not check that the single-flight coordinator and layer %r share a "
                "Redis server: %s",
                layer.name,
                error,
            )
            return
        if found != token.encode():
            raise LayerUnavailableError(
                self.name,
                f"it does not reach the same Redis server and database as layer "
                f"{layer.name!r}: the locks must live next to the values",
            )

    # -- requests, from the loads' tasks -------------------------------------------------

    async def acquire(self, key: str, tags: Iterable[str]) -> str | None:
        """Internal (the stack's).

        Try to take ``key``'s lock: its token if taken, None if held elsewhere.

        :raises LayerUnavailableError: Redis did not answer, or refused.
        """
        keys = self._keyspace()
        lock = keys.locks + key
        lease = _Lease(
            secrets.token_hex(16), key, keys.values + key, [keys.tag_sets + t for t in sorted(tags)]
        )
        command = ACQUIRE.evalsha(
            [lock, *lease.tag_sets], [lease.token, _milliseconds(self.lease), key]
        )
        try:
            (reply,) = await self._call([command])
        except BaseException:
            # The lock may have been taken with nobody to hear it (a lost reply, a
            # cancelled caller): give it back rather than block the key for a lease.
            self._orphan(lock, lease)
            raise
        if reply != 1:
            return None
        self._held[lock] = lease
        self.acquired += 1
        return lease.token

    async def release(self, key: str, token: str) -> None:
        """Internal (the stack's).

        Give ``key``'s lock back if it is still ours (and take the key out of the tag
        sets if the load stored nothing). Never raises: the command is sent, not
        awaited (an unreleased lock expires with its lease); shielded and bounded by
        ``timeout``."""
        lock = self._keyspace().locks + key
        lease = self._held.get(lock)
        if lease is not None and lease.token == token:
            del self._held[lock]
            await self._send_quietly([lease.release(lock)])

    async def _send_quietly(
        self, commands: list[Command], retry: dict[str, _Lease] | None = None
    ) -> None:
        """Send ``commands`` without waiting for their replies (errors are logged); if
        they are lost, ``retry``'s releases are tried again later."""
        transport = self._transport
        if transport is None or not commands:
            return

        def delivered(replies: list[object] | RedisError) -> None:
            if isinstance(replies, RedisError):
                logger.debug("single-flight lock commands were lost: %s", replies)
                for lock, lease in (retry or {}).items():
                    self._orphan(lock, lease)
                return
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    logger.warning("a single-flight lock command failed: %s", reply)

        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + self.timeout):
            await transport.send(commands, delivered)

    async def mark(self, name: str, value: str) -> None:
        """Write ``value`` at ``name`` for a few seconds: the stack reads it back through
        its Redis layer to check that both talk to the same server and database."""
        await self._call([("SET", name, value, "PX", 10_000)])

    def lost_lock(self) -> None:
        """Internal (the stack's).

        Count a holder whose guarded write found its lock gone."""
        self.lost += 1

    def waiting(self) -> Wait:
        """Start a wait for a lock held elsewhere (counted)."""
        self.waits += 1
        return Wait(anyio.current_time(), self.wait_timeout, self.lease)

    async def _call(self, commands: list[Command]) -> list[object]:
        transport = self._transport
        if transport is None:
            raise LayerUnavailableError(self.name, "the coordinator is not running")
        try:
            replies = await run_scripts(transport.call, commands, LOCK_SCRIPTS)
        except RedisError as error:
            raise unavailable(self.name, error) from error
        return check_replies(self.name, replies)

    def _keyspace(self) -> KeySpace:
        keys = self._keys
        if keys is None:
            raise LayerUnavailableError(self.name, "the coordinator is not attached to a stack")
        return keys

    def statistics(self, state: str) -> CoordinatorStatistics:
        """Internal (the stack's).

        A snapshot of the counters; ``state`` is the coordinator's health as the
        stack sees it."""
        return CoordinatorStatistics(
            state=state,
            acquired=self.acquired,
            waits=self.waits,
            takeovers=self.takeovers,
            timeouts=self.timeouts,
            lost=self.lost,
            held=len(self._held),
            refreshes_elsewhere=self.refreshes_elsewhere,
        )


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
