"""``CacheStack``: the public face of a stack of layers and the actors behind it.

The stack starts every layer actor and the coordinator in its own task group when
``async with`` enters it, and cancels them all when the block exits. Its methods check
their arguments, do the synchronous work on local layers in the caller's task, and hand
whatever needs a task (reading slower layers, fetching) to the coordinator.

Writes and invalidations are fenced: the coordinator marks loads in flight for the
affected keys stale before the slower layers are changed and again before the local
layers are, so a load that read the old state can never write it back afterwards.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._bus import BusMessage, RedisInvalidationBus, split_keys
from ._clock import Clock, loop_clock
from ._coordinator import MISSING, Coordinator, Fetcher, Flight, Outcome
from ._distributed import RedisSingleFlightCoordinator
from ._exceptions import CacheClosedError, LayerUnavailableError
from ._health import LayerHealth
from ._layer import Clear, Hit, InvalidateTag, Layer, LocalLayer, Write
from ._listener import InvalidationListener
from ._options import CircuitBreaker, GracefulDegradation
from ._redis_layer import Announcement, RedisLayer
from ._statistics import CacheStatistics, CoordinatorStatistics, LayerStatistics
from ._supervisor import Supervisor
from ._telemetry import OpenTelemetry
from ._validation import check_key, check_keys, check_tag, check_tags, check_ttl

logger = logging.getLogger("layercache.stack")

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
DRAIN_TIMEOUT = 5.0
"""Seconds the stack's exit gives its cancelled loads to clean up (release locks)."""

T = TypeVar("T")


class _Skipped:
    __slots__ = ()


SKIPPED = _Skipped()
"""What a guarded request to a degraded or open layer returns in graceful mode."""


class CacheStack:
    """A multi-layer cache: layers ordered fastest first, run as actors.

    Construction checks the configuration and does no I/O; ``async with`` starts the
    stack and every call on it must happen inside that block.

    :param layers: the layers, fastest first (for example ``MemoryLayer`` then
        ``RedisLayer``). Names must be unique.
    :param invalidation_bus: a :class:`~layercache.RedisInvalidationBus`: changes made
        here drop the same keys from other stacks' local layers, and theirs from ours.
    :param single_flight_coordinator: a
        :class:`~layercache.RedisSingleFlightCoordinator`: a miss runs the fetcher once
        across every process sharing the Redis layer, not once per process. Needs a
        :class:`~layercache.RedisLayer` in the stack (the locks live next to its values).
    :param graceful_degradation: skip a failing remote layer (or bus, or coordinator)
        instead of raising :class:`~layercache.LayerUnavailableError`.
    :param circuit_breaker: stop trying a remote layer after repeated failures.
    :param telemetry: an :class:`~layercache.OpenTelemetry` hook: metrics from
        :meth:`statistics` and a span per load. Without it nothing is measured extra.
    :param clock: the time source for TTLs; defaults to the event loop's clock.
    :raises ValueError: no layers, or two layers with one name.
    :raises TypeError: something that is not a layer or an option object.
    """

    def __init__(
        self,
        layers: Iterable[Layer],
        *,
        invalidation_bus: RedisInvalidationBus | None = None,
        single_flight_coordinator: RedisSingleFlightCoordinator | None = None,
        graceful_degradation: GracefulDegradation | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        telemetry: OpenTelemetry | None = None,
    ) -> None:
        if isinstance(layers, Layer):
            raise TypeError("layers must be a list of layers, e.g. CacheStack([MemoryLayer()])")
        self._layers: tuple[Layer, ...] = tuple(layers)
        if not self._layers:
            raise ValueError("a CacheStack needs at least one layer")
        for layer in self._layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"not a cache layer: {layer!r}")
        names = [layer.name for layer in self._layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique within a stack, got {names}")
        if invalidation_bus is not None and not isinstance(invalidation_bus, RedisInvalidationBus):
            raise TypeError(
                f"invalidation_bus must be a RedisInvalidationBus, not {invalidation_bus!r}"
            )
        self._lock_layer: RedisLayer | None = None
        if single_flight_coordinator is not None:
            if not isinstance(single_flight_coordinator, RedisSingleFlightCoordinator):
                raise TypeError(
                    "single_flight_coordinator must be a RedisSingleFlightCoordinator, "
                    f"not {single_flight_coordinator!r}"
                )
            shared = [layer for layer in self._layers if isinstance(layer, RedisLayer)]
            if not shared:
                raise ValueError(
                    "a RedisSingleFlightCoordinator needs a RedisLayer in the stack: the "
                    "processes waiting for a load find its value there"
                )
            self._lock_layer = shared[-1]
        if graceful_degradation is not None and not isinstance(
            graceful_degradation, GracefulDegradation
        ):
            raise TypeError("graceful_degradation must be a GracefulDegradation")
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError("circuit_breaker must be a CircuitBreaker")
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds")
        if telemetry is not None and not isinstance(telemetry, OpenTelemetry):
            raise TypeError(f"telemetry must be an OpenTelemetry hook, not {telemetry!r}")
        self.telemetry = telemetry
        self.invalidation_bus = invalidation_bus
        self.single_flight_coordinator = single_flight_coordinator
        self.origin = uuid.uuid4().hex
        """This stack's id on the invalidation bus (it ignores its own messages)."""
        self._listener: InvalidationListener | None = None
        self._announcer = _announcer(self._layers, invalidation_bus)
        """The Redis layer whose changes carry the bus's messages, if any."""
        self.graceful_degradation = graceful_degradation
        self.circuit_breaker = circuit_breaker
        self._clock = clock
        # Leading in-process layers are read synchronously, in the caller's task.
        self._local: tuple[LocalLayer, ...] = ()
        for layer in self._layers:
            if not isinstance(layer, LocalLayer):
                break
            self._local += (layer,)
        self._every_local = tuple(layer for layer in self._layers if isinstance(layer, LocalLayer))
        """Every in-process layer, leading or not: what the bus invalidates."""
        self._remote_layers = tuple(
            layer for layer in self._layers if layer not in self._every_local
        )
        """The layers that need I/O, in order."""
        self._coordinator = Coordinator(self._load, self._read_flights)
        # One remote layer behind the local ones: lone reads take the direct path.
        remote = self._layers[len(self._local) :]
        self._direct: RedisLayer | None = None
        if len(remote) == 1 and isinstance(remote[0], RedisLayer):
            self._direct = remote[0]
            self._coordinator.direct_reads = True
        self._health: dict[object, LayerHealth] = {}
        self._state = _NEW
        self._task_group: TaskGroup | None = None
        self._fast_read: Callable[[str], object] | None = None
        self._fast_hits = 0
        self._layer_hits = dict.fromkeys(names, 0)
        self._misses = 0
        self._fetches = 0
        self._fetch_errors = 0
        self._stale_loads = 0

    def __repr__(self) -> str:
        names = ", ".join(layer.name for layer in self._layers)
        return (
            f"<CacheStack {self._state} layers=[{names}] "
            f"loads={self._coordinator.loads_in_flight} waiters={self._coordinator.waiters}>"
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != _NEW:
            raise RuntimeError("a CacheStack can be entered only once; create a new one")
        self._state = _CLOSED  # until every actor is up
        attached: list[Layer | RedisInvalidationBus | RedisSingleFlightCoordinator | OpenTelemetry]
        attached = []
        bus = self.invalidation_bus
        distributed = self.single_flight_coordinator
        try:
            clock = self._clock or loop_clock()
            if self.telemetry is not None:
                self.telemetry.attach(self.statistics)
                attached.append(self.telemetry)
            if bus is not None:
                bus.attach()
                attached.append(bus)
            if distributed is not None:
                assert self._lock_layer is not None
                distributed.attach(self._lock_layer.keys)
                attached.append(distributed)
            for layer in self._layers:
                layer.attach(clock)
                attached.append(layer)
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
        except BaseException:
            for part in attached:
                part.detach()
            raise
        self._task_group = task_group
        self._health = {}
        try:
            for layer in self._layers:
                await self._start_supervised(
                    task_group, layer, layer.name, f"layer {layer.name!r}", layer.run, clock
                )
            coordinator = Supervisor("coordinator", self._coordinator.run)
            await task_group.start(coordinator.run, name="layercache coordinator")
            if distributed is not None:
                await self._start_supervised(
                    task_group,
                    distributed,
                    distributed.name,
                    "single-flight coordinator",
                    distributed.run,
                    clock,
                )
                assert self._lock_layer is not None
                await _check_same_server(distributed, self._lock_layer)
            if bus is not None:
                await self._start_listener(task_group, bus, clock)
        except BaseException as error:
            await self._shut_down(error)
            raise
        self._state = _OPEN
        if self._local:
            self._fast_read = self._local[0].reader(MISSING)
        return self

    async def _start_supervised(
        self,
        task_group: TaskGroup,
        part: object,
        name: str,
        label: str,
        run: Callable[..., Awaitable[None]],
        clock: Clock,
    ) -> None:
        """Start ``run``, an actor of ``part`` (a remote part: layer, bus, coordinator),
        under a supervisor, with the health record its requests go through."""
        health = LayerHealth(
            name, degradation=self.graceful_degradation, breaker=self.circuit_breaker, clock=clock
        )
        self._health[part] = health
        supervisor = Supervisor(label, run, on_crash=health.crashed, on_restart=health.restarted)
        await task_group.start(supervisor.run, name=f"layercache {label}")

    async def _start_listener(
        self, task_group: TaskGroup, bus: RedisInvalidationBus, clock: Clock
    ) -> None:
        listener = InvalidationListener(
            bus,
            self.origin,
            apply=self._apply_invalidation,
            on_resubscribed=self._resubscribed,
            start_disconnected=self.graceful_degradation is not None,
        )
        await self._start_supervised(
            task_group, listener, listener.name, "invalidation listener", listener.run, clock
        )
        self._listener = listener

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._shut_down(exc)

    async def _shut_down(self, exc: BaseException | None) -> bool | None:
        self._state = _CLOSED
        self._fast_read = None
        task_group = self._task_group
        assert task_group is not None
        self._task_group = None
        try:
            # Loads first, while the actors they clean up through are still running.
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + DRAIN_TIMEOUT):
                await self._coordinator.drain()
            task_group.cancel_scope.cancel()
            if exc is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
                # The cancellation may be the task group's own: it must see it.
                return await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            # Anything else propagates as it is, not wrapped in an exception group.
            await task_group.__aexit__(None, None, None)
            return None
        finally:
            for layer in self._layers:
                layer.detach()
            if self.invalidation_bus is not None:
                self.invalidation_bus.detach()
            if self.single_flight_coordinator is not None:
                self.single_flight_coordinator.detach()
            if self.telemetry is not None:
                self.telemetry.detach()

    def _check_open(self) -> None:
        if self._state != _OPEN:
            if self._state == _NEW:
                raise CacheClosedError("the CacheStack is not open: use it inside `async with`")
            raise CacheClosedError("the CacheStack is closed: its `async with` block has exited")

    # -- reads -------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        fetcher: Callable[[], Awaitable[Any]] | None = None,
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        default: Any = None,
    ) -> Any:
        """Return the value for ``key`` from the first layer that has it.

        Faster layers that missed are backfilled. On a full miss, ``fetcher()`` is
        awaited once however many tasks ask at the same moment, its result is stored in
        every layer with ``ttl`` and ``tags``, and returned to all of them. Without a
        fetcher a miss returns ``default``. A fetched ``None`` is cached like any value.

        :raises TypeError: a key that is not str, a fetcher that is not callable or does
            not return an awaitable, bad ``ttl``/``tags`` types.
        :raises ValueError: an empty or too long key, a TTL that is not positive and
            finite or is over 10**12 seconds, an empty tag.
        :raises CacheClosedError: outside the stack's ``async with`` block.
        :raises SerializationError: a fetched value a layer cannot store (nothing is
            written).
        :raises LayerUnavailableError: a layer failed and degradation is off.

        Whatever the fetcher raises reaches every caller waiting on that load and is
        not cached.
        """
        read = self._fast_read
        if (
            read is not None
            and type(key) is str
            and ttl is None
            and not tags
            and (fetcher is None or callable(fetcher))
        ):
            value = read(key)
            if value is not MISSING:
                self._fast_hits += 1
                return value
        return await self._get_slow(key, fetcher, ttl, tags, default)

    async def _get_slow(
        self,
        key: object,
        fetcher: Fetcher | None,
        ttl: object,
        tags: object,
        default: Any,
    ) -> Any:
        self._check_open()
        key = check_key(key)
        checked_ttl = check_ttl(ttl)
        checked_tags = check_tags(tags)
        if fetcher is not None and not callable(fetcher):
            raise TypeError(f"fetcher must be a zero-argument async callable, not {fetcher!r}")
        for index in range(len(self._local)):
            hit = self._local[index].get_many_nowait((key,)).get(key)
            if hit is not None:
                self._backfill_local(index, {key: hit})
                self._layer_hits[self._local[index].name] += 1
                return hit.value
        if fetcher is None and len(self._local) == len(self._layers):
            self._misses += 1
            return default
        flight, start = self._coordinator.join(key, fetcher, checked_ttl, checked_tags)
        read_it = start and await self._read_directly(flight)
        try:
            if flight.reply.done:
                if not read_it:
                    # Answered with no I/O (a layer down or skipped): still let other
                    # tasks run, or a caller retrying in a loop would starve them, the
                    # transport's reconnect included (asyncio's set event does not yield).
                    await anyio.lowlevel.checkpoint()
                value, source = flight.reply.result()
            else:
                value, source = await self._coordinator.wait(flight)
        except Exception:
            self._misses += 1  # no layer answered; the fetcher (or a layer) failed
            raise
        if source is None:
            self._misses += 1
        else:
            self._layer_hits[source] += 1
        return default if value is MISSING else value

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return ``{key: value}`` for the keys some layer has; missing keys are left out.

        Reads each layer once for all the keys still missing, and backfills the faster
        layers. Runs no fetcher.
        """
        self._check_open()
        pending = list(dict.fromkeys(check_keys(keys)))
        found: dict[str, Any] = {}
        fences = self._coordinator.fence_count
        for index, layer in enumerate(self._layers):
            if not pending:
                break
            hits = await self._read_layer(layer, pending)
            if not hits:
                continue
            if self._coordinator.fence_count == fences:
                await self._backfill(index, hits)
            for key, hit in hits.items():
                found[key] = hit.value
            self._layer_hits[layer.name] += len(hits)
            pending = [key for key in pending if key not in hits]
        self._misses += len(pending)
        return found

    async def _read_directly(self, flight: Flight) -> bool:
        """Start a reading flight on the one remote layer; its reader completes it,
        unless the caller reads the reply itself (True: see ``RedisLayer.read_reply``).

        The caller has just missed every local layer (with no await since), so the
        read goes straight to the remote layer; the result is handled synchronously
        in the transport's reader task (or this one) by ``done`` below, as ``_read_flights``
        would: health accounting, backfill of the local layers, the flight's answer.
        """
        layer = self._direct
        assert layer is not None
        index = len(self._local)
        health = self._health[layer]
        key = flight.key
        probe = health.admit()
        if probe is None:
            health.skipped += 1
            if health.graceful:
                self._coordinator.complete(flight, (MISSING, None))
            else:
                self._coordinator.complete(flight, health.refusal())
            return False

        def done(result: tuple[dict[str, Hit], list[str]] | BaseException) -> None:
            # Runs in the transport's reader task: it must never raise into it.
            try:
                finish(result)
            except Exception as error:
                logger.exception("completing a read of %r failed", key)
                self._coordinator.complete(flight, error)

        def finish(result: tuple[dict[str, Hit], list[str]] | BaseException) -> None:
            if isinstance(result, BaseException):
                layer.count_error()
                error = LayerUnavailableError(layer.name, str(result))
                error.__cause__ = result
                health.failed(error, probe)
                self._coordinator.complete(flight, (MISSING, None) if health.graceful else error)
                return
            health.succeeded(probe)
            hits, corrupt = result
            if corrupt:
                # Rare: the bad bytes are deleted before anyone hears "miss", in a task.
                self._coordinator.start(self._clean_then_miss, layer, corrupt, flight)
                return
            hit = hits.get(key)
            if hit is None:
                self._coordinator.complete(flight, (MISSING, None))
                return
            if not flight.stale:
                self._backfill_local(index, {key: hit})
            self._coordinator.complete(flight, (hit.value, layer.name))

        try:
            delivered = await layer.read_now((key,), done)
        except BaseException as error:
            # Not sent after all: nobody else would answer this flight's callers. A
            # cancelled caller's flight goes to the batched path (its other callers did
            # not ask to be cancelled); anything else is their error too.
            health.abandoned(probe)
            if isinstance(error, anyio.get_cancelled_exc_class()):
                self._coordinator.gather(flight)
            else:
                self._coordinator.complete(flight, error)
            raise
        if delivered is None:
            # A round trip is under way: join the batch that goes out after it.
            health.abandoned(probe)
            self._coordinator.gather(flight)
            return False
        # A lone load reads its own reply where it can; cancelled meanwhile, it leaves
        # the read to the transport's reader, which still completes the flight.
        return self._coordinator.loads_in_flight == 1 and await layer.read_reply(delivered)

    async def _clean_then_miss(self, layer: RedisLayer, corrupt: list[str], flight: Flight) -> None:
        try:
            await layer.delete_corrupt(corrupt)
        finally:
            self._coordinator.complete(flight, (MISSING, None))

    async def _read_flights(self, flights: list[Flight]) -> list[Outcome]:
        """Reading loads (no fetcher), batched: each layer is read once for all keys."""
        by_key = {flight.key: flight for flight in flights}
        found: dict[str, Outcome] = {}
        pending = list(by_key)
        for index, layer in enumerate(self._layers):
            if not pending:
                break
            # Local layers are read again: a set() may have filled them meanwhile.
            hits = await self._read_layer(layer, pending)
            if not hits:
                continue
            fresh = {key: hit for key, hit in hits.items() if not by_key[key].stale}
            if fresh:
                await self._backfill(index, fresh)
            for key, hit in hits.items():
                found[key] = (hit.value, layer.name)
            pending = [key for key in pending if key not in hits]
        return [found.get(flight.key, (MISSING, None)) for flight in flights]

    async def _load(self, flight: Flight) -> Outcome:
        """The read-through procedure for a load with a fetcher (one task per load)."""
        telemetry = self.telemetry
        if telemetry is None:
            return await self._read_or_fetch(flight)
        with telemetry.load_span(flight.key) as report_source:
            outcome = await self._read_or_fetch(flight)
            report_source(outcome[1])
            return outcome

    async def _read_or_fetch(self, flight: Flight) -> Outcome:
        # A found entry's tags are known only once it is found, after fences for them
        # may have passed: copy it up only if no fence at all happened meanwhile.
        fences = self._coordinator.fence_count
        found = await self._read_through(flight, fences, 0)
        if found is not None:
            return found
        if self.single_flight_coordinator is not None:
            return await self._load_once_everywhere(flight, fences)
        return await self._fetch(flight, None)

    async def _read_through(self, flight: Flight, fences: int, start: int) -> Outcome | None:
        """Look for ``flight``'s key in the layers from ``start`` on, backfilling the
        faster ones; None if none has it."""
        key = flight.key
        for index in range(start, len(self._layers)):
            layer = self._layers[index]
            # The local layers are read again: a set() may have filled them meanwhile.
            hits = await self._read_layer(layer, (key,))
            hit = hits.get(key)
            if hit is not None:
                if not flight.stale and self._coordinator.fence_count == fences:
                    await self._backfill(index, hits)
                return hit.value, layer.name
        return None

    async def _load_once_everywhere(self, flight: Flight, fences: int) -> Outcome:
        """Fetch under the Redis lock, or wait for the process that holds it (see
        ``_distributed``): one fetch across every process sharing the Redis layer."""
        distributed = self.single_flight_coordinator
        assert distributed is not None
        remote = len(self._local)
        wait = None
        while True:
            token = await self._remote(distributed, distributed.acquire, flight.key, flight.tags)
            if isinstance(token, _Skipped):
                return await self._fetch(flight, None)  # degraded: single-flight per process
            if token is not None:
                try:
                    # The previous holder may have stored the value just before we took
                    # the lock: look once more before fetching.
                    found = await self._read_through(flight, fences, remote)
                    if found is not None:
                        return found
                    if wait is not None:
                        distributed.takeovers += 1
                    return await self._fetch(flight, token)
                finally:
                    await distributed.release(flight.key, token)
            if wait is None:
                wait = distributed.waiting()
            await anyio.sleep(wait.pause())
            found = await self._read_through(flight, fences, remote)
            if found is not None:
                return found
            if wait.given_up(anyio.current_time()):
                distributed.timeouts += 1
                message = (
                    f"the load of {flight.key!r} held by another process did not finish "
                    f"within the wait (wait_timeout={distributed.wait_timeout} s, twice)"
                )
                if not self._health[distributed].graceful:
                    raise LayerUnavailableError(distributed.name, message)
                logger.warning("%s; fetching here", message)
                return await self._fetch(flight, None)

    async def _fetch(self, flight: Flight, token: str | None) -> Outcome:
        """Run the fetcher and store its result, unless a change made it stale. With a
        lock ``token``, the Redis layer holding the lock stores it only if the lock
        survived (no change anywhere meanwhile), and then so do the others."""
        assert flight.fetcher is not None
        self._fetches += 1
        try:
            value = await _call_fetcher(flight.fetcher)
        except Exception:
            self._fetch_errors += 1
            raise
        writes = self._encode(flight.key, value, flight.ttl, flight.tags)
        # Stale before the remote write: nothing is written. Stale during it: the
        # remote layers got the write just before the change reached them, and the
        # change itself removes it there; the local layers are not written.
        stored = not flight.stale and await self._write_remote(writes, token)
        if stored and not flight.stale:
            self._write_local(writes)
            return value, None
        self._stale_loads += 1
        return value, None

    async def _read_layer(self, layer: Layer, keys: Sequence[str]) -> dict[str, Hit]:
        """One layer's hits for ``keys``: local ones at once, remote ones as health allows
        (a skipped remote layer reads as a miss)."""
        if isinstance(layer, LocalLayer):
            return layer.get_many_nowait(keys)
        answer = await self._remote(layer, layer.get_many, keys)
        return {} if isinstance(answer, _Skipped) else answer

    def _backfill_local(self, index: int, hits: Mapping[str, Hit]) -> None:
        for layer in self._local[:index]:
            layer.write_many_nowait(self._backfill_writes(layer, hits))

    async def _backfill(self, index: int, hits: Mapping[str, Hit]) -> None:
        for layer in self._layers[:index]:
            writes = self._backfill_writes(layer, hits)
            if isinstance(layer, LocalLayer):
                layer.write_many_nowait(writes)
            else:
                await self._remote(layer, layer.write_many, writes, write=True)

    @staticmethod
    def _backfill_writes(layer: Layer, hits: Mapping[str, Hit]) -> list[Write]:
        return [
            Write(key, layer.encode(hit.value), layer.backfill_ttl(hit.ttl), hit.tags)
            for key, hit in hits.items()
        ]

    # -- writes ------------------------------------------------------------------------

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store ``value`` under ``key`` in every layer, replacing its tags.

        :raises SerializationError: a layer cannot encode ``value``; no layer is written.
        """
        self._check_open()
        checked_ttl, checked_tags = check_ttl(ttl), check_tags(tags)
        checked_key = check_key(key)  # after them, as set_many checks its keys
        writes = self._encode(checked_key, value, checked_ttl, checked_tags)
        await self._write((checked_key,), writes)

    async def set_many(
        self, mapping: Mapping[str, Any], *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store every item of ``mapping`` in every layer with the same ``ttl`` and ``tags``.

        :raises SerializationError: a layer cannot encode a value; no layer is written.
        """
        self._check_open()
        if type(mapping) is not dict and not isinstance(mapping, Mapping):
            raise TypeError(
                f"set_many takes a mapping of key to value, not {type(mapping).__name__}"
            )
        checked_ttl = check_ttl(ttl)
        checked_tags = check_tags(tags)
        keys = check_keys(mapping.keys())
        writes: dict[Layer, list[Write]] = {layer: [] for layer in self._layers}
        for key in keys:
            encoded = self._encode(key, mapping[key], checked_ttl, checked_tags)
            for layer, layer_writes in encoded.items():
                writes[layer].extend(layer_writes)
        await self._write(keys, writes)

    async def _write(self, keys: Sequence[str], writes: Mapping[Layer, Sequence[Write]]) -> None:
        """Store ``writes`` (checked, encoded), then tell the other stacks about ``keys``."""
        # Fenced before the slower layers are written and again before the local ones:
        # a load in flight at any moment of this write will not write back after it.
        messages = split_keys(self.origin, keys)
        announce = self._announcement(messages)
        self._coordinator.fence_keys(keys)
        await self._write_remote(writes, announce=announce)
        self._coordinator.fence_keys(keys)
        self._write_local(writes)
        await self._broadcast(messages, announce)

    def _encode(
        self, key: str, value: object, ttl: float | None, tags: frozenset[str]
    ) -> dict[Layer, list[Write]]:
        """Encode ``value`` for every layer first: a failure leaves every layer untouched."""
        return {
            layer: [Write(key, layer.encode(value), layer.effective_ttl(ttl), tags)]
            for layer in self._layers
        }

    async def _write_remote(
        self,
        writes: Mapping[Layer, Sequence[Write]],
        token: str | None = None,
        *,
        announce: Announcement | None = None,
    ) -> bool:
        """Write the layers that need I/O. The local ones come after, with no await
        between, so a reader that copied the old entry up meanwhile is overwritten.

        With a single-flight lock ``token``, the lock's layer writes only if the lock
        is still ours; False if it was not (nothing more is written). ``announce``
        goes with the write to the announcing layer (see :meth:`_announcement`).
        """
        lock_layer = self._lock_layer
        if token is not None and lock_layer is not None:
            # The lock's layer first: if the lock is gone, no layer gets the write.
            (write,) = writes[lock_layer]
            stored = await self._remote(
                lock_layer, lock_layer.write_locked, write, token, write=True
            )
            if stored is False:
                assert self.single_flight_coordinator is not None
                self.single_flight_coordinator.lost_lock()
                return False
        for layer in self._remote_layers:
            if token is not None and layer is lock_layer:
                continue
            carrier = self._carrier(layer, announce)
            if carrier is not None:
                await self._remote(layer, carrier.write_many, writes[layer], announce, write=True)
            else:
                await self._remote(layer, layer.write_many, writes[layer], write=True)
        return True

    def _write_local(self, writes: Mapping[Layer, Sequence[Write]]) -> None:
        for layer in self._every_local:
            layer.write_many_nowait(writes[layer])

    async def delete(self, key: str) -> None:
        """Remove ``key`` from every layer (absent keys are fine)."""
        await self.delete_many((key,))

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key in ``keys`` from every layer."""
        self._check_open()
        checked = check_keys(keys)
        messages = split_keys(self.origin, checked)
        announce = self._announcement(messages)

        async def delete(layer: Layer) -> None:
            carrier = self._carrier(layer, announce)
            if carrier is not None:
                await carrier.delete_many(checked, announce=announce)
            else:
                await layer.delete_many(checked)

        await self._invalidate(lambda: self._coordinator.fence_keys(checked), delete)
        await self._broadcast(messages, announce)

    async def invalidate_by_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag`` from every layer.

        :returns: how many distinct keys were removed, as far as this stack could see.
        """
        self._check_open()
        checked = check_tag(tag)
        removed: set[str] = set()
        messages = [BusMessage(self.origin, "tag", tag=checked)]
        announce = self._announcement(messages)

        async def invalidate(layer: Layer) -> None:
            carrier = self._carrier(layer, announce)
            if carrier is not None:
                removed.update(await carrier.invalidate_tag(checked, announce=announce))
            else:
                removed.update(await layer.invalidate_tag(checked))

        await self._invalidate(lambda: self._coordinator.fence_tag(checked), invalidate)
        await self._broadcast(messages, announce)
        return len(removed)

    async def clear(self) -> None:
        """Remove everything this stack holds in every layer (only under its prefixes)."""
        self._check_open()
        await self._invalidate(self._coordinator.fence_all, lambda layer: layer.clear())
        await self._broadcast([BusMessage(self.origin, "clear")])

    async def _invalidate(
        self, fence: Callable[[], None], apply: Callable[[Layer], Awaitable[None]]
    ) -> None:
        # Slower layers first, so a reader cannot copy an entry from them into a local
        # layer that has already been cleared; loads are fenced before and after.
        fence()
        for layer in self._layers:
            if not layer.local:
                await self._remote(layer, apply, layer, write=True)
        fence()
        for layer in self._layers:
            if layer.local:
                await apply(layer)

    # -- the invalidation bus ----------------------------------------------------------

    def _announcement(self, messages: list[BusMessage]) -> Announcement | None:
        """The bus's PUBLISH commands for ``messages``, for the announcing layer to send
        right after the change they announce, in the same batch: peers hear of it one
        round trip sooner, and never before Redis has it (one connection runs its
        commands in order). None without such a layer."""
        listener = self._listener
        if self._announcer is None or listener is None or not messages:
            return None
        return Announcement(listener.publish_commands(messages))

    def _carrier(self, layer: Layer, announce: Announcement | None) -> RedisLayer | None:
        """``layer``, if it is the one that sends ``announce`` with its change."""
        announcer = self._announcer
        return announcer if announce is not None and layer is announcer else None

    async def _broadcast(
        self, messages: list[BusMessage], announce: Announcement | None = None
    ) -> None:
        """Tell the other stacks, unless ``announce`` already did (with the change)."""
        listener = self._listener
        if listener is None or not messages:
            return
        if announce is not None and announce.sent:
            listener.carried(len(messages))
            return
        # Skipped, failed or refused with the change (which may still have published
        # it): once more on the bus's own connection. Peers drop keys twice, harmlessly.
        await self._remote(listener, listener.publish, messages, write=True)

    def _apply_invalidation(self, message: BusMessage) -> None:
        """Another stack changed something: drop it here (called by the listener).

        Applied here and now, not posted to the layers' inboxes: once the listener
        counts a message as received, no read can see what it invalidated (the handlers
        are synchronous, and this is the loop's one thread).
        """
        local_message: InvalidateTag | Clear
        if message.op == "keys":  # the common case, with no message object in between
            self._coordinator.fence_keys(message.keys)
            for layer in self._every_local:
                layer.delete_many_nowait(message.keys)
            return
        if message.op == "tag":
            assert message.tag is not None
            self._coordinator.fence_tag(message.tag)
            local_message = InvalidateTag(message.tag)
        else:
            self._coordinator.fence_all()
            local_message = Clear()
        for layer in self._every_local:
            layer.handle(local_message)

    def _resubscribed(self) -> None:
        """The bus may have lost messages while unsubscribed: forget everything local."""
        self._coordinator.fence_all()
        for layer in self._every_local:
            layer.handle(Clear())

    # -- failure handling --------------------------------------------------------------

    async def _remote(
        self,
        layer: object,
        request: Callable[..., Awaitable[T]],
        *args: Any,
        write: bool = False,
    ) -> T | _Skipped:
        """Await ``request(*args)`` on a remote layer as its health allows.

        Strict mode: a failure raises :class:`LayerUnavailableError` (cause chained),
        and an open breaker refuses at once. Graceful mode: a failing, degraded or open
        layer is skipped (``SKIPPED``); a skipped write or delete is counted as dropped.
        """
        health = self._health[layer]
        probe = health.admit()
        if probe is None:
            health.skipped += 1
            if health.graceful:
                health.dropped += write
                return SKIPPED
            raise health.refusal()
        try:
            result = await request(*args)
        except LayerUnavailableError as error:
            health.failed(error, probe)
            if health.graceful:
                health.dropped += write
                return SKIPPED
            raise
        except BaseException:
            health.abandoned(probe)
            raise
        health.succeeded(probe)
        return result

    # -- observation -------------------------------------------------------------------

    def statistics(self) -> CacheStatistics:
        """A frozen snapshot of the stack's counters (see :class:`CacheStatistics`)."""
        layer_hits = dict(self._layer_hits)
        if self._local:
            layer_hits[self._local[0].name] += self._fast_hits
        listener = self._listener
        return CacheStatistics(
            hits=sum(layer_hits.values()),
            misses=self._misses,
            fetches=self._fetches,
            fetch_errors=self._fetch_errors,
            layer_hits=MappingProxyType(layer_hits),
            loads_in_flight=self._coordinator.loads_in_flight,
            waiters=self._coordinator.waiters,
            stale_loads=self._stale_loads,
            invalidations_sent=listener.sent if listener else 0,
            invalidations_carried=listener.carried_sent if listener else 0,
            invalidations_received=listener.received if listener else 0,
            invalidations_rejected=sum(listener.rejected.values()) if listener else 0,
            bus_state=self._bus_state(),
            layers=tuple(self._layer_statistics()),
            coordinator=self._coordinator_statistics(),
            **self._bus_health(),
        )

    def _bus_health(self) -> dict[str, int]:
        health = self._health.get(self._listener) if self._listener is not None else None
        if health is None:
            return {}
        return {
            "bus_errors": health.failures,
            "bus_skipped": health.skipped,
            "bus_dropped": health.dropped,
        }

    def _coordinator_statistics(self) -> CoordinatorStatistics | None:
        distributed = self.single_flight_coordinator
        if distributed is None:
            return None
        health = self._health.get(distributed)
        if health is None or self._state != _OPEN:
            return distributed.statistics("stopped")
        return replace(
            distributed.statistics(health.state()),
            errors=health.failures,
            skipped=health.skipped,
            consecutive_failures=health.consecutive_failures,
        )

    def _layer_statistics(self) -> Iterable[LayerStatistics]:
        for index, layer in enumerate(self._layers):
            stats = layer.statistics()
            if index == 0 and self._local:
                # The hot path reads the first layer without its bookkeeping.
                stats = replace(stats, hits=stats.hits + self._fast_hits)
            health = self._health.get(layer)
            if health is not None:
                state = health.state()
                if state == "healthy" and stats.state in ("disconnected", "stopped"):
                    state = stats.state
                stats = replace(
                    stats,
                    state=state,
                    state_until=health.until(),
                    errors=max(stats.errors, health.failures),
                    consecutive_failures=health.consecutive_failures,
                    skipped=health.skipped,
                    dropped=health.dropped,
                )
            yield stats

    def _bus_state(self) -> str | None:
        listener = self._listener
        if listener is None:
            return None
        state = self._health[listener].state()
        if state == "healthy" and not listener.subscribed:
            return "unsubscribed"
        return state

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers, fastest first, as given."""
        return self._layers

    @property
    def state(self) -> str:
        """``"new"``, ``"open"`` or ``"closed"``."""
        return self._state


async def _check_same_server(distributed: RedisSingleFlightCoordinator, layer: RedisLayer) -> None:
    """Refuse a coordinator whose Redis is not the layer's: its locks would be invisible
    to the layer's guarded writes, and nothing would ever be stored. Skipped, with a
    warning, when either cannot reach Redis now."""
    token = secrets.token_hex(16)
    name = f"{layer.keys.locks}\x00probe:{token}"  # no key's lock: random, and marked
    try:
        await distributed.mark(name, token)
        found = await layer.take(name)
    except LayerUnavailableError as error:
        logger.warning(
            "could not check that the single-flight coordinator and layer %r share a Redis "
            "server: %s",
            layer.name,
            error,
        )
        return
    if found != token.encode():
        raise LayerUnavailableError(
            distributed.name,
            f"it does not reach the same Redis server and database as layer {layer.name!r}: "
            "the locks must live next to the values",
        )


async def _call_fetcher(fetcher: Fetcher) -> object:
    result = fetcher()
    if not inspect.isawaitable(result):
        raise TypeError(
            f"fetcher must return an awaitable (define it with `async def`); "
            f"{fetcher!r} returned {type(result).__name__}"
        )
    return await result


def _announcer(layers: Sequence[Layer], bus: RedisInvalidationBus | None) -> RedisLayer | None:
    """The Redis layer that sends the bus's messages along with the changes they
    announce: the last remote layer a change reaches, if it talks to the bus's own
    server (same address whatever the database, since pub/sub ignores it, or the same
    ``client=``). None otherwise: the bus then publishes on its own connection after
    the change."""
    remote = [layer for layer in layers if not layer.local]
    if bus is None or not remote or not isinstance(remote[-1], RedisLayer):
        return None
    layer = remote[-1]
    if layer.address is not None and bus.address is not None:
        return layer if layer.address.server() == bus.address.server() else None
    return layer if layer.client is not None and layer.client is bus.client else None
