"""The Redis layer actor: the shared L2 on a Redis server.

Owns: its lanes (for ``url=``, a pipelined connection of its own and a spare for the
requests that arrive while it moves a large value, see :mod:`._redis._lanes`; for
``client=``, an adapted ``redis.asyncio`` client), the inbox callers post requests to,
and the layer's counters.

Takes (over its inbox): :class:`Read` and :class:`Call`. The actor drains every request
waiting in its inbox and sends them as one batch: the keys of all the reads become one
``MGET`` (with a ``PTTL`` per key, so a hit carries its remaining TTL), the calls'
commands follow in the same pipeline. 200 concurrent reads cost one or two round trips,
not 200.

Called from other tasks: every request method (``get_many``, ``write_many``, …) builds
its request in the caller's task and either posts it or, when nothing is queued or
under way, sends it itself (``_send_now``: the writer lock makes the caller and the
actor take turns, and a send to an idle connection does not await midway, so a
cancellation cannot leave half a request). ``read_now``/``read_reply`` are the direct
read's variant: the reply completes the caller's flight by callback in the transport's
reader task (or, on trio, in the caller's own task while the reader stands by). One
thread: the counters and the queue count are never seen half-changed.

Callers wait on a one-shot reply slot with the layer's ``timeout`` as deadline, so a
cancelled or timed-out caller leaves the connection in step. Bytes that are not a value
this layer wrote are a miss: the key is deleted and counted
(``statistics().layers[i].corrupt``), and nothing in them is executed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import hiredis
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._backend import Event, event_type
from ._clock import Clock, deadline_clock
from ._exceptions import LayerUnavailableError, SerializationError
from ._layer import Layer
from ._record import Record
from ._redis._adapter import ClientTransport
from ._redis._address import RedisAddress
from ._redis._connection import Command
from ._redis._endpoint import RedisEndpoint, check_replies, unavailable
from ._redis._errors import RedisConnectionError, RedisError, reply_error
from ._redis._lanes import Lanes
from ._redis._scripts import (
    DELETE,
    EXPIRE,
    EXPIRE_TAG,
    INVALIDATE_TAG,
    SCRIPTS,
    WRITE,
    Script,
    loading,
    run_scripts,
)
from ._redis._transport import Transport
from ._reply import ReplySlot
from ._serializers import CorruptValue, Unwrapped, resolve_serializer, unwrap, wrap
from ._statistics import LayerStatistics
from ._validation import check_max_size, check_name, check_ttl

logger = logging.getLogger("layercache.redis")

DEFAULT_TIMEOUT = 1.0
"""Seconds any Redis request may take before the call gives up on the layer."""
DEFAULT_MAX_VALUE_SIZE = 16 * 1024 * 1024
"""Largest encoded value the layer stores by default, in bytes (16 MiB): far above what
a cache entry should be, and small enough that encoding it, moving it and decoding it on
every miss stay well under a second (Redis itself takes up to 512 MB)."""
INBOX_SIZE = 10_000
MAX_BATCH = 1_000
DELETE_CHUNK = 500
SCAN_COUNT = 1_000


class CallbackReply:
    """A reply that calls back instead of waking a waiter: the transport's reader task
    completes the read itself (see :meth:`RedisLayer.read_now`). A failure reaches the
    callback as the layer's :class:`~layercache.LayerUnavailableError`, counted."""

    __slots__ = ("_callback", "_done", "_layer")

    def __init__(self, callback: ReadDone, layer: RedisLayer) -> None:
        self._callback = callback
        self._layer = layer
        self._done = False

    def is_done(self) -> bool:
        return self._done

    def set(self, value: tuple[dict[str, Record], list[str]]) -> None:
        if not self._done:
            self._done = True
            self._callback(value)

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._callback(self._layer.unavailable(error))


ReadDone = Callable[[tuple[dict[str, Record], list[str]] | LayerUnavailableError], None]
"""Receives a direct read's ``(records, corrupt keys)``, or the error that stopped it."""


@dataclass(frozen=True, slots=True)
class Read:
    keys: tuple[str, ...]
    reply: ReplySlot[Any] | CallbackReply
    deadline: float


@dataclass(frozen=True, slots=True)
class Call:
    commands: list[Command]
    reply: ReplySlot[Any]
    deadline: float


Request = Read | Call


@dataclass(slots=True)
class Announcement:
    """Commands a change takes along: sent right after it, in the same batch on the same
    connection, so Redis runs them only once the change is made (the invalidation
    bus's PUBLISH: a peer told to reload a key must find the new value). ``sent``
    becomes True once every one of them was answered without an error."""

    commands: Sequence[Command]
    sent: bool = False


class KeySpace:
    """The Redis names of one prefix's values, tag index and locks: disjoint by design,
    since each sub-namespace starts with its own marker right after the prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values = f"{prefix}v:"
        self.tag_sets = f"{prefix}t:"
        self.key_tags = f"{prefix}k:"
        self.locks = f"{prefix}l:"

    def everything(self) -> str:
        """A SCAN pattern matching every name under the prefix, and nothing else."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}*"


class RedisLayer(Layer):
    """A layer on a Redis server, shared by every stack that uses it.

    :param url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
        ``unix:///path?db=N``. Works on asyncio and trio.
    :param client: instead of ``url``, an existing ``redis.asyncio.Redis``-compatible
        client (``decode_responses=False``), e.g. ``fakeredis.FakeAsyncRedis()``;
        asyncio only.
    :param ttl: default seconds an entry lives in Redis (None: no expiry).
    :param prefix: namespaces every name this layer writes (values, tag index, locks).
    :param timeout: seconds any request may take (default 1.0): a black-holed server
        slows a call by at most this much.
    :param serializer: ``"json"`` (default), ``"msgpack"``, or a ``Serializer`` such as
        ``PickleSerializer(key=...)``.
    :param ssl_context: for ``rediss://``, a custom ``ssl.SSLContext`` (e.g. a private CA).
    :param max_value_size: the largest encoded value stored, in bytes (default 16 MiB,
        ``16 * 1024 * 1024``): a larger one raises
        :class:`~layercache.SerializationError` before any layer is written.
    :raises TypeError, ValueError: for bad arguments (checked here, without I/O).
    """

    local = False

    def __init__(
        self,
        url: str | None = None,
        client: Any = None,
        ttl: float | None = None,
        prefix: str = "layercache:",
        timeout: float = DEFAULT_TIMEOUT,
        serializer: Any = None,
        name: str = "redis",
        *,
        ssl_context: Any = None,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    ) -> None:
        super().__init__(name=check_name(name), ttl=check_ttl(ttl))
        self.max_value_size = check_max_size(max_value_size, "max_value_size")
        self.endpoint = RedisEndpoint(
            "RedisLayer", url, client, timeout=timeout, ssl_context=ssl_context
        )
        self.address: RedisAddress | None = self.endpoint.address
        self.client = client
        self.timeout = self.endpoint.timeout
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        self.prefix = prefix
        self.keys = KeySpace(prefix)
        self.serializer = resolve_serializer(serializer)
        self._lanes: Lanes | None = None
        self._inbox: MemoryObjectSendStream[Request] | None = None
        self._writer: anyio.Lock | None = None
        self._now: Clock = anyio.current_time
        self._new_event: Callable[[], Event] = anyio.Event
        self._queued = 0
        """Requests posted to the inbox and not yet sent by the actor (including one
        handed straight to the actor while it waited, not in the inbox's buffer)."""
        self._hits = self._misses = self._writes = self._deletes = 0
        self._errors = self._corrupt = self._batches = 0

    def __repr__(self) -> str:
        where = self.endpoint.display()
        return f"<RedisLayer {self.name!r} {where} prefix={self.prefix!r} {self._state()}>"

    def _state(self) -> str:
        lanes = self._lanes
        if lanes is None:
            return "stopped"
        return "connected" if lanes.connected else "disconnected"

    # -- the actor ---------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        # Read per request: resolved once (what anyio would look up each time).
        self._now, self._new_event = deadline_clock(), event_type()
        # Every new connection loads the scripts first, and checks it can run them.
        async with self.endpoint.lanes(self.name, loading(SCRIPTS)) as lanes:
            send, receive = anyio.create_memory_object_stream[Request](INBOX_SIZE)
            with send, receive:
                self._lanes = lanes
                self._inbox = send
                self._queued = 0
                # One writer at a time on the main connection: the actor, or a task
                # writing a read directly.
                self._writer = anyio.Lock(fast_acquire=True)
                task_status.started()
                try:
                    await self._serve(lanes, receive)
                finally:
                    self._inbox = None
                    self._lanes = None
                    self._writer = None
                    _fail_waiting(receive, RedisConnectionError("the Redis layer stopped"))

    async def _serve(self, lanes: Lanes, receive: MemoryObjectReceiveStream[Request]) -> None:
        answered = lanes.answered
        while True:
            try:
                batch = [receive.receive_nowait()]
            except anyio.WouldBlock:
                batch = [await receive.receive()]
            try:
                # While a round trip is under way, let requests gather: they go out
                # together (on the spare connection while a large value moves).
                transport = await lanes.wait_free()
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                # Requests that went late only while a round trip before them was being
                # answered (a large value that kept moving) waited for a transfer, not
                # for Redis: they get a fresh deadline instead of failing.
                renew = lanes.answered != answered
                if transport is lanes.main:
                    writer = self._writer
                    assert writer is not None
                    async with writer:
                        await self._dispatch(transport, batch, renew)
                else:
                    # Direct sends go to the main connection only (and not while this
                    # batch is in hand), which may still be writing a large value.
                    await self._dispatch(transport, batch, renew)
                answered = lanes.answered
            except BaseException:
                # Requests in hand are answered whatever happens: callers rely on it.
                error = RedisConnectionError("the Redis layer's actor failed")
                for request in batch:
                    request.reply.fail(error)
                raise
            finally:
                self._queued -= len(batch)

    def _on_time(self, batch: list[Request], renew: bool) -> list[Request]:
        """The requests of ``batch`` still worth sending; the late ones are answered
        (``renew``: given a fresh deadline instead, see :meth:`_serve`)."""
        now = self._now()
        if not any(request.deadline <= now for request in batch):
            return batch
        if renew:
            fresh = now + self.timeout
            return [dataclasses.replace(request, deadline=fresh) for request in batch]
        # Their callers have given up: answering them is enough. Sending them would
        # hand the transport a deadline already past, and it would drop a healthy
        # connection for it.
        late = RedisConnectionError(f"no answer within {self.timeout} s (queued too long)")
        for request in batch:
            if request.deadline <= now:
                request.reply.fail(late)
        return [request for request in batch if request.deadline > now]

    async def _dispatch(
        self, transport: Transport | ClientTransport, batch: list[Request], renew: bool = False
    ) -> None:
        batch = self._on_time(batch, renew)
        if not batch:
            return
        if len(batch) == 1:  # a lone request: no batching to do
            await self._dispatch_one(transport, batch[0])
            return
        self._batches += 1
        reads = [request for request in batch if isinstance(request, Read)]
        calls = [request for request in batch if isinstance(request, Call)]
        keys = list(dict.fromkeys(key for read in reads for key in read.keys))
        commands: list[Command] = []
        if keys:
            commands += self._read_commands(keys)
        spans: list[tuple[ReplySlot[Any], int, int]] = []
        for call in calls:
            spans.append((call.reply, len(commands), len(commands) + len(call.commands)))
            commands.extend(call.commands)
        if not commands:
            for read in reads:
                read.reply.set(({}, []))
            return

        def deliver(replies: list[object] | RedisError) -> None:
            if isinstance(replies, RedisError):
                for request in batch:
                    request.reply.fail(replies)
                return
            if reads:
                decoded = self._decode(keys, replies[0], replies[1 : 1 + len(keys)])
                for read in reads:
                    if isinstance(decoded, RedisError):
                        read.reply.fail(decoded)
                        continue
                    found, corrupt = decoded
                    read.reply.set(
                        (
                            {key: found[key] for key in read.keys if key in found},
                            [key for key in read.keys if key in corrupt],
                        )
                    )
            for reply, start, end in spans:
                reply.set(replies[start:end])

        await transport.send(commands, deliver, min(request.deadline for request in batch))

    def _read_commands(self, keys: list[str]) -> list[Command]:
        """One MGET of ``keys`` and a PTTL each, so a hit carries its remaining TTL."""
        names = [self.keys.values + key for key in keys]
        return [("MGET", *names), *[("PTTL", name) for name in names]]

    async def _dispatch_one(self, transport: Transport | ClientTransport, request: Request) -> None:
        """Send a lone request (not late) without the batching code."""
        self._batches += 1
        if isinstance(request, Call):
            await self._dispatch_call(transport, request)
        else:
            await self._dispatch_read(transport, request)

    async def _dispatch_read(self, transport: Transport | ClientTransport, read: Read) -> None:
        keys = list(dict.fromkeys(read.keys))
        if not keys:
            read.reply.set(({}, []))
            return
        commands = self._read_commands(keys)
        reply = read.reply

        def deliver(replies: list[object] | RedisError) -> None:
            if isinstance(replies, RedisError):
                reply.fail(replies)
                return
            decoded = self._decode(keys, replies[0], replies[1:])
            if isinstance(decoded, RedisError):
                reply.fail(decoded)
                return
            found, corrupt = decoded
            reply.set((found, list(corrupt)))

        await transport.send(commands, deliver, read.deadline)

    @staticmethod
    async def _dispatch_call(transport: Transport | ClientTransport, call: Call) -> None:
        reply = call.reply

        def deliver(replies: list[object] | RedisError) -> None:
            if isinstance(replies, RedisError):
                reply.fail(replies)
            else:
                reply.set(replies)

        await transport.send(call.commands, deliver, call.deadline)

    def _decode(
        self, keys: list[str], values: object, ttls: Sequence[object]
    ) -> tuple[dict[str, Record], set[str]] | RedisError:
        """Decode an MGET and its PTTLs: the records found, and the keys holding bad
        bytes. A record's deadlines are placed from now, on the stack's clock, by its
        remaining TTL and its envelope's windows (see :func:`_read_record`)."""
        if not isinstance(values, list):
            return reply_error(values, "MGET failed")
        found: dict[str, Record] = {}
        corrupt: set[str] = set()
        now = self.clock()
        for key, raw, ttl_ms in zip(keys, values, ttls, strict=True):
            if raw is None or not isinstance(ttl_ms, int) or ttl_ms == -2:
                continue
            try:
                found[key] = _read_record(unwrap(self.serializer, raw), now, ttl_ms)
            except CorruptValue as error:
                logger.debug("dropping undecodable value at %r: %s", key, error)
                corrupt.add(key)
        self._hits += len(found)
        self._misses += len(keys) - len(found)
        self._corrupt += len(corrupt)
        return found, corrupt

    # -- requests, from the callers' tasks ---------------------------------------------

    async def _request(self, make: Callable[[ReplySlot[Any], float], Request]) -> Any:
        """Post a request and wait for its reply, at most ``timeout`` seconds.

        The deadline travels with the request (the actor hands it to the transport,
        whose reader fails the batch when it passes), so no cancel scope is needed
        here. When nothing is queued or under way, the request skips the actor (see
        :meth:`_send_now`).
        """
        inbox = self._inbox
        if inbox is None:
            raise LayerUnavailableError(self.name, "the layer is not running")
        reply: ReplySlot[Any] = ReplySlot(self._new_event())
        deadline = self._now() + self.timeout
        request = make(reply, deadline)
        try:
            if not await self._send_now(request):
                try:
                    inbox.send_nowait(request)
                except anyio.WouldBlock:
                    with anyio.fail_after(self.timeout):  # a full inbox: wait for room
                        await inbox.send(request)
                self._queued += 1
            return await reply.wait()
        except TimeoutError as error:
            self._errors += 1
            raise LayerUnavailableError(self.name, f"no answer within {self.timeout} s") from error
        except RedisError as error:
            self._errors += 1
            raise unavailable(self.name, error) from error
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as error:
            raise LayerUnavailableError(self.name, "the layer stopped") from error

    async def _call(
        self,
        commands: list[Command],
        scripts: Sequence[Script] = (),
        announce: Announcement | None = None,
    ) -> list[object]:
        """Run ``commands`` in one batch; raise on the first error reply.

        Script calls that meet an empty script cache (a restarted server) are sent
        again as EVAL, which loads them. ``announce``'s commands follow in the same
        batch (and again after such a retry); their outcome goes to ``announce.sent``.
        """

        then = announce.commands if announce is not None else ()
        replies = await run_scripts(self._send_batch, commands, scripts, then)
        if announce is not None:
            refused = [r for r in replies[len(commands) :] if isinstance(r, hiredis.ReplyError)]
            if refused:
                logger.debug("%r could not announce a change: %s", self.name, refused[0])
            announce.sent = not refused
            replies = replies[: len(commands)]
        try:
            return check_replies(self.name, replies)
        except LayerUnavailableError:
            self._errors += 1
            raise

    async def _send_batch(self, commands: list[Command]) -> list[object]:
        replies: list[object] = await self._request(functools.partial(Call, commands))
        return replies

    # -- the layer interface -----------------------------------------------------------

    def encode(self, value: object) -> bytes:
        """``value`` as the serializer's bytes.

        :raises SerializationError: the serializer refuses it, or its encoding is over
            ``max_value_size`` bytes.
        """
        body = self.serializer.dumps(value)
        if len(body) > self.max_value_size:
            raise SerializationError(
                f"a {type(value).__name__} of {len(body)} bytes once encoded is over the "
                f"max_value_size of layer {self.name!r} ({self.max_value_size} bytes)"
            )
        return body

    def decode(self, encoded: object) -> object:
        """What a read of ``encoded`` (from :meth:`encode`) gives back.

        :raises SerializationError: the serializer cannot read its own bytes back
            (msgpack refuses non-str map keys when reading, say).
        :raises TypeError: ``encoded`` is not bytes (not this layer's encoding).
        """
        if not isinstance(encoded, bytes):
            raise TypeError(f"not an encoding of this layer: {type(encoded).__name__}")
        try:
            return self.serializer.loads(encoded)
        except Exception as error:
            raise SerializationError(
                f"{self.serializer.name} does not read this value back: "
                f"{type(error).__name__}: {error}"
            ) from error

    async def read_now(self, keys: Sequence[str], done: ReadDone) -> Callable[[], bool] | None:
        """Internal (the stack's).

        Write a read at once if the connection is idle; ``done`` gets the result.

        The fast path for a lone cold read: the calling task writes the request itself
        (a small write to an idle connection does not block), and the transport hands
        the reply to ``done``: no trip through the actor. Returns None, doing nothing,
        when a round trip is already under way: the caller should batch instead.
        Otherwise it returns a check of whether ``done`` has been called, for
        :meth:`read_reply`. ``done`` may be called before this returns (no connection,
        say). The caller need not stay: the transport's reader completes the read.
        """
        reply = CallbackReply(done, self)
        request = Read(tuple(keys), reply, self._now() + self.timeout)
        if not await self._send_now(request):
            return None
        return reply.is_done

    async def read_reply(self, delivered: Callable[[], bool]) -> bool:
        """Internal (the stack's).

        After :meth:`read_now`, read its reply in the calling task where the transport
        allows it (trio, plain sockets: ``Transport.read_own``) rather than have its
        reader task wake up and hand it over. True if this task read it (``done`` has
        run, and this task has waited on the socket). Worth it for a caller with
        nothing else in flight: others are served sooner by the reader. A cancelled
        caller leaves the reading to the reader, which completes the read.
        """
        lanes = self._lanes
        if lanes is not None and isinstance(lanes.main, Transport):
            return await lanes.main.read_own(delivered)
        return False

    async def _send_now(self, request: Request) -> bool:
        """Send ``request`` from the caller's task if the layer is idle: no request
        posted to the actor and not yet sent, no round trip under way. Nothing queued
        earlier can then be overtaken, and the request saves a trip through the actor.
        False, doing nothing, otherwise.

        No shield needed: on an idle transport the request goes into the socket without
        an await (one too big for the socket is finished by the transport, shielded), so
        a cancellation cannot catch it half-sent.
        """
        lanes, writer, inbox = self._lanes, self._writer, self._inbox
        if lanes is None or writer is None or inbox is None or self._queued:
            return False
        transport = lanes.main  # read_reply reads it there
        if not transport.idle:
            return False
        try:
            writer.acquire_nowait()
        except anyio.WouldBlock:
            return False
        try:
            await self._dispatch_one(transport, request)  # fresh, so not late
        except Exception:
            # What would crash the actor: answer the request, keep the caller going.
            logger.exception("sending a request to %r failed", self.name)
            request.reply.fail(RedisConnectionError("the Redis layer failed to send it"))
        finally:
            writer.release()
        return True

    async def take(self, name: str) -> bytes | None:
        """Internal (the stack's).

        Read and delete the raw bytes at ``name`` (a Redis name, not a key): the
        stack's check that a single-flight coordinator shares this layer's server."""
        found, _ = await self._call([("GET", name), ("DEL", name)])
        return found if isinstance(found, bytes) else None

    def unavailable(self, error: BaseException) -> LayerUnavailableError:
        """Count a failed direct read and say so as the layer's error (cause chained)."""
        self._errors += 1
        translated = unavailable(self.name, error)
        translated.__cause__ = error
        return translated

    async def delete_corrupt(self, keys: Sequence[str]) -> None:
        """Internal (the stack's).

        Delete undecodable values; a failure is logged, not raised (it is clean-up)."""
        try:
            await self._call(self._key_commands(DELETE, keys), (DELETE,))
        except LayerUnavailableError as error:
            logger.debug("could not delete undecodable values %r: %s", keys, error)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        found: dict[str, Record]
        corrupt: list[str]
        found, corrupt = await self._request(
            lambda reply, deadline: Read(tuple(keys), reply, deadline)
        )
        if corrupt:
            # Bad bytes are deleted before the caller goes on, so whatever it writes
            # next (a fetched value, say) cannot race with the clean-up.
            await self.delete_corrupt(corrupt)
        return found

    async def write_many(
        self, records: Mapping[str, Record], announce: Announcement | None = None
    ) -> None:
        """Store ``records``; ``announce`` (the stack's) follows them in the same batch."""
        if not records:
            return
        now = self.clock()
        commands = [self._write_command(key, record, now) for key, record in records.items()]
        await self._call(commands, (WRITE,), announce)
        self._writes += len(records)

    async def write_locked(self, key: str, record: Record, token: str) -> bool:
        """Internal (the stack's).

        Store a single-flight lock holder's result, only while the key's lock still
        holds ``token``: False (nothing written) if a change to the key took it away."""
        command = self._write_command(key, record, self.clock(), token)
        (reply,) = await self._call([command], (WRITE,))
        written = reply == 1
        self._writes += written
        return written

    def _write_command(self, key: str, record: Record, now: float, token: str = "") -> Command:
        body = record.value
        if not isinstance(body, bytes):
            body = self.encode(body)
        ttl_ms, stale_ms, early_ms = _windows(record, now)
        tags = sorted(record.tags)
        keys = [self.keys.values + key, self.keys.key_tags + key]
        keys.extend(self.keys.tag_sets + tag for tag in tags)
        envelope = wrap(self.serializer, body, record.tags, stale_ms, early_ms)
        arguments: list[str | bytes | int] = [
            envelope,
            ttl_ms,
            key,
            self.keys.tag_sets,
            self.keys.values,
            self.keys.locks,
            token,
            *tags,
        ]
        return WRITE.evalsha(keys, arguments)

    def _key_commands(self, script: Script, keys: Sequence[str]) -> list[Command]:
        """``script`` (DELETE's arguments) for ``keys``, a call per chunk of them."""
        commands: list[Command] = []
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = keys[start : start + DELETE_CHUNK]
            names: list[str] = []
            for key in chunk:
                names += (self.keys.values + key, self.keys.key_tags + key)
            commands.append(script.evalsha(names, [self.keys.tag_sets, self.keys.locks, *chunk]))
        return commands

    def _tag_command(self, script: Script, tag: str) -> Command:
        """``script`` (INVALIDATE_TAG's arguments) for ``tag``."""
        keys = self.keys
        return script.evalsha(
            [keys.tag_sets + tag], [keys.tag_sets, keys.values, keys.key_tags, keys.locks, tag]
        )

    async def delete_many(
        self, keys: Iterable[str], *, announce: Announcement | None = None
    ) -> None:
        """Delete ``keys``; ``announce`` (the stack's) follows in the same batch."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return
        replies = await self._call(self._key_commands(DELETE, unique), (DELETE,), announce)
        self._deletes += sum(reply for reply in replies if isinstance(reply, int))

    async def invalidate_tag(self, tag: str, *, announce: Announcement | None = None) -> set[str]:
        """Drop every entry carrying ``tag``; ``announce`` (the stack's) follows."""
        command = self._tag_command(INVALIDATE_TAG, tag)
        (reply,) = await self._call([command], (INVALIDATE_TAG,), announce)
        removed = {key.decode() for key in reply} if isinstance(reply, list) else set()
        self._deletes += len(removed)
        return removed

    async def expire_many(
        self, keys: Iterable[str], *, announce: Announcement | None = None
    ) -> set[str]:
        """Mark ``keys`` stale now, each keeping its stale window: its TTL becomes that
        window, its refresh-ahead window goes (one script per chunk of keys, reading
        only the envelope's header). An entry without a stale window is deleted. Their
        locks go too: a load in flight for them stores nothing. ``announce`` (the
        stack's) follows in the same batch. Returns the keys found, kept or deleted."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return set()
        replies = await self._call(self._key_commands(EXPIRE, unique), (EXPIRE,), announce)
        return self._expired(replies)

    async def expire_tag(self, tag: str, *, announce: Announcement | None = None) -> set[str]:
        """:meth:`expire_many` for every entry carrying ``tag`` (and the locks of the
        loads carrying it); ``announce`` (the stack's) follows."""
        replies = await self._call([self._tag_command(EXPIRE_TAG, tag)], (EXPIRE_TAG,), announce)
        return self._expired(replies)

    def _expired(self, replies: list[object]) -> set[str]:
        """The keys in the expire scripts' replies, ``[kept, deleted]`` each; counts the
        deletes."""
        found: set[str] = set()
        for reply in replies:
            if isinstance(reply, list) and len(reply) == 2:
                kept, deleted = reply
                found.update(key.decode() for key in kept)
                found.update(key.decode() for key in deleted)
                self._deletes += len(deleted)
        return found

    async def clear(self) -> None:
        """Remove every name under this layer's prefix (SCAN + UNLINK, never FLUSHDB)."""
        pattern = self.keys.everything()
        cursor: bytes | int = b"0"
        while True:
            (reply,) = await self._call([("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)])
            cursor, names = _parse_scan(reply)
            if names:
                await self._call([("UNLINK", *names)])
            if int(cursor) == 0:
                return

    def statistics(self) -> LayerStatistics:
        return LayerStatistics(
            name=self.name,
            kind="redis",
            state=self._state(),
            hits=self._hits,
            misses=self._misses,
            writes=self._writes,
            deletes=self._deletes,
            evictions=0,
            expirations=0,
            size=None,
            max_size=None,
            errors=self._errors,
            corrupt=self._corrupt,
        )


def _windows(record: Record, now: float) -> tuple[int, int, int]:
    """What the envelope and Redis keep of ``record``'s deadlines, written at ``now``:
    ``(ttl_ms, stale_ms, early_ms)``, the physical TTL (0: none) and the windows.

    Each deadline in whole milliseconds from now, rounded down (ignoring float dust:
    ``now + 5 - now > 5``), so a record reads back no fresher and no longer-lived than
    written, by less than a millisecond (a TTL under 1 ms is 1 ms); a deadline already
    past is now. An entry stale forever after its fresh TTL (no ``stale_until``) is stored
    until ``fresh_until``: Redis places every deadline from the TTL.
    """
    fresh, early = record.fresh_until, record.refresh_at
    until = record.stale_until if record.stale_until is not None else fresh
    if until is None:
        return 0, 0, 0
    ttl_ms = max(1, _whole_ms(until - now))
    if fresh == until and early == fresh:
        return ttl_ms, 0, 0  # no windows: the common case, in one comparison
    fresh_ms = ttl_ms if fresh is None else min(ttl_ms, max(0, _whole_ms(fresh - now)))
    early_ms = fresh_ms if early is None else min(fresh_ms, max(0, _whole_ms(early - now)))
    return ttl_ms, ttl_ms - fresh_ms, fresh_ms - early_ms


def _whole_ms(seconds: float) -> int:
    """``seconds`` in whole milliseconds, rounded down, ignoring float dust."""
    return math.floor(round(seconds * 1000, 6))


def _read_record(unwrapped: Unwrapped, now: float, ttl_ms: int) -> Record:
    """The record of an envelope read at ``now`` with ``ttl_ms`` left (PTTL; -1: none):
    it is gone at the end of that TTL, stale ``stale_ms`` before, due for a refresh
    ``early_ms`` before that.

    :raises CorruptValue: windows on a key without a TTL (forged, or not ours: the
        windows would place no deadline, and the entry would read as fresh forever).
    """
    value, tags, stale_ms, early_ms = unwrapped
    if ttl_ms < 0:
        if stale_ms or early_ms:
            raise CorruptValue(f"windows of {stale_ms} and {early_ms} ms without a TTL")
        return Record(value, None, None, tags, refresh_at=None)
    until = now + ttl_ms / 1000
    if not stale_ms and not early_ms:
        return Record(value, until, until, tags, refresh_at=until)
    fresh_ms = ttl_ms - stale_ms  # below 0 once the entry is stale: in the past
    fresh = now + fresh_ms / 1000 if stale_ms else until
    early = now + (fresh_ms - early_ms) / 1000 if early_ms else fresh
    return Record(value, fresh, until, tags, refresh_at=early)


def _fail_waiting(receive: MemoryObjectReceiveStream[Request], error: RedisError) -> None:
    """Answer every request still in the inbox of a stopping actor: nobody waits forever."""
    while True:
        try:
            request = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
        request.reply.fail(error)


def _parse_scan(reply: object) -> tuple[bytes | int, list[bytes]]:
    if not isinstance(reply, list) or len(reply) != 2:
        raise LayerUnavailableError("redis", f"unexpected SCAN reply {reply!r}")
    cursor, names = reply
    if not isinstance(cursor, bytes | int) or not isinstance(names, list):
        raise LayerUnavailableError("redis", f"unexpected SCAN reply {reply!r}")
    return cursor, names
