"""The distributed single-flight actor: one fetch per key across processes.

Owns: a Redis connection of its own (``url=``; or an adapted ``redis.asyncio`` client,
``client=``), the locks this stack holds, which it renews every ``lease / 3`` seconds
while their loads run, and the lock counters.

The protocol for a key that every layer missed, run by the stack's load (the local
coordinator in front makes it one attempt per process and key):

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

Redis unavailable: the stack's health guard skips the coordinator in graceful mode (the
load falls back to local single-flight) or raises ``LayerUnavailableError`` (strict).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Iterable
from typing import Any

import anyio
import hiredis
from anyio.abc import TaskStatus

from ._exceptions import LayerUnavailableError
from ._redis._adapter import ClientTransport
from ._redis._address import RedisAddress, parse_redis_url
from ._redis._connection import Command
from ._redis._errors import RedisConfigurationError, RedisError
from ._redis._scripts import ACQUIRE, LOCK_SCRIPTS, RELEASE, RENEW, run_scripts
from ._redis._transport import Transport
from ._redis_layer import DEFAULT_TIMEOUT, KeySpace
from ._statistics import CoordinatorStatistics
from ._validation import check_ttl

logger = logging.getLogger("layercache.distributed")

POLL_FIRST = 0.005
"""Seconds before a waiter's first look at the value; doubled after each look."""
POLL_MAX = 0.25
"""The longest pause between two looks."""


class Wait:
    """A waiter's schedule: jittered exponential back-off, and a time limit it may
    renew once (the waiter starts over instead of fetching)."""

    __slots__ = ("_delay", "_timeout", "deadline", "renewed")

    def __init__(self, now: float, timeout: float) -> None:
        self._timeout = timeout
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
        self.deadline = now + self._timeout
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
        (once); after a second timeout the call raises
        :class:`~layercache.LayerUnavailableError`, or with graceful degradation
        fetches by itself. Keep ``lease`` below ``2 * wait_timeout`` for a dead holder
        to be replaced by a takeover rather than by those fallbacks.
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
        if (url is None) == (client is None):
            raise TypeError("RedisSingleFlightCoordinator needs exactly one of url= or client=")
        self.address: RedisAddress | None = parse_redis_url(url) if url is not None else None
        self.client = client
        self.lease = _positive(lease, "lease")
        self.wait_timeout = _positive(wait_timeout, "wait_timeout")
        self.timeout = _positive(timeout, "timeout")
        self.ssl_context = ssl_context
        self._keys: KeySpace | None = None
        self._transport: Transport | ClientTransport | None = None
        self._held: dict[str, str] = {}
        """Lock name → token, for the locks to renew."""
        self.acquired = self.waits = self.takeovers = self.timeouts = self.lost = 0

    def __repr__(self) -> str:
        where = self.address.display() if self.address is not None else repr(self.client)
        return f"<RedisSingleFlightCoordinator {where} lease={self.lease} held={len(self._held)}>"

    def attach(self, keys: KeySpace) -> None:
        """Bind to a stack, whose Redis layer's ``keys`` name the locks."""
        if self._keys is not None:
            raise RuntimeError("this single-flight coordinator is already in use by another stack")
        self._keys = keys

    def detach(self) -> None:
        """Unbind from the stack that exited (it may then serve another)."""
        self._keys = None
        self._held.clear()

    # -- the actor ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """The actor: connect (a refused login fails the stack's start), then renew the
        held locks until cancelled."""
        transport: Transport | ClientTransport
        if self.address is not None:
            transport = Transport(
                self.address,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
                setup=[("SCRIPT", "LOAD", script.source) for script in LOCK_SCRIPTS],
            )
        else:
            transport = ClientTransport(self.client, timeout=self.timeout)
        refused: Exception | None = None
        async with anyio.create_task_group() as tasks:
            try:
                await tasks.start(transport.run)
            except (RedisConfigurationError, TypeError) as error:
                refused = error
            else:
                self._transport = transport
                task_status.started()
                try:
                    await self._renew_forever()
                finally:
                    self._transport = None
                    tasks.cancel_scope.cancel()
        if isinstance(refused, TypeError):
            raise refused
        if refused is not None:
            raise LayerUnavailableError(self.name, str(refused)) from refused

    async def _renew_forever(self) -> None:
        """Extend every held lock each ``lease / 3``: a live holder never loses its lock
        to a takeover, a dead one stops renewing and loses it after ``lease``."""
        while True:
            await anyio.sleep(self.lease / 3)
            held = list(self._held.items())
            if not held:
                continue
            command = RENEW.evalsha(
                [name for name, _ in held], [_milliseconds(self.lease), *(t for _, t in held)]
            )
            try:
                (reply,) = await self._call([command])
            except LayerUnavailableError as error:
                logger.warning("could not renew %d single-flight locks: %s", len(held), error)
                continue
            renewed = reply if isinstance(reply, list) else []
            for (name, token), ok in zip(held, renewed, strict=False):
                if ok != 1 and self._held.get(name) == token:
                    # A change to the key (or an expiry) took it: the holder's guarded
                    # write will find out and store nothing.
                    del self._held[name]
                    logger.info("single-flight lock %r was taken away during its load", name)

    # -- requests, from the loads' tasks -------------------------------------------------

    async def acquire(self, key: str, tags: Iterable[str]) -> str | None:
        """Try to take ``key``'s lock: its token if taken, None if held elsewhere.

        :raises LayerUnavailableError: Redis did not answer, or refused.
        """
        keys = self._keyspace()
        token = secrets.token_hex(16)
        lock = keys.locks + key
        command = ACQUIRE.evalsha(
            [lock, *(keys.tag_sets + tag for tag in sorted(tags))],
            [token, _milliseconds(self.lease), key],
        )
        (reply,) = await self._call([command])
        if reply != 1:
            return None
        self._held[lock] = token
        self.acquired += 1
        return token

    async def release(self, key: str, token: str) -> None:
        """Give ``key``'s lock back if it is still ours. Never raises for Redis's sake
        (an unreleased lock expires with its lease); shielded, bounded by ``timeout``."""
        lock = self._keyspace().locks + key
        if self._held.get(lock) == token:
            del self._held[lock]
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + self.timeout):
            try:
                await self._call([RELEASE.evalsha([lock], [token])])
            except LayerUnavailableError as error:
                logger.debug("could not release %r (its lease will expire): %s", lock, error)

    def lost_lock(self) -> None:
        """Count a holder whose guarded write found its lock gone."""
        self.lost += 1

    def waiting(self) -> Wait:
        """Start a wait for a lock held elsewhere."""
        self.waits += 1
        return Wait(anyio.current_time(), self.wait_timeout)

    async def _call(self, commands: list[Command]) -> list[object]:
        transport = self._transport
        if transport is None:
            raise LayerUnavailableError(self.name, "the coordinator is not running")
        try:
            replies = await run_scripts(transport.call, commands, LOCK_SCRIPTS)
        except RedisError as error:
            raise LayerUnavailableError(self.name, str(error)) from error
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise LayerUnavailableError(self.name, f"Redis answered: {reply}")
        return replies

    def _keyspace(self) -> KeySpace:
        keys = self._keys
        if keys is None:
            raise LayerUnavailableError(self.name, "the coordinator is not attached to a stack")
        return keys

    def statistics(self, state: str) -> CoordinatorStatistics:
        """A snapshot of the counters; ``state`` is the coordinator's health as the
        stack sees it."""
        return CoordinatorStatistics(
            state=state,
            acquired=self.acquired,
            waits=self.waits,
            takeovers=self.takeovers,
            timeouts=self.timeouts,
            lost=self.lost,
            held=len(self._held),
        )


def _positive(value: float, name: str) -> float:
    checked = check_ttl(value, name=name)
    if checked is None:
        raise ValueError(f"{name} must be a positive finite number of seconds")
    return checked


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
