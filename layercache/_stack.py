"""``CacheStack``: the public face of a stack of layers and the actors behind it.

It checks arguments, runs the ``async with`` lifecycle (:mod:`._lifecycle`) and hands
each call to its path: reads to :mod:`._read`, loads to :mod:`._load`, writes to
:mod:`._write`, invalidations to :mod:`._invalidation`; :mod:`._snapshot` assembles
``statistics()``. The parts they share are wired once, in :mod:`._parts`.

The one thing done here is the hot path of ``get``: a memory hit is a synchronous
lookup into the first layer's store (:meth:`~layercache.MemoryLayer.reader`), in the
caller's task. That is safe because the memory layer's state is only ever changed by
synchronous handlers on the loop's one thread, and nothing awaits in between.

One owner: the stack belongs to the thread and event loop that entered it
(:class:`~._backend.Owner`). Every public method but ``statistics()`` checks both before
it touches anything and raises ``RuntimeError`` for a stranger; the hot path affords only
the thread half (a 30 ns ``get_ident()`` comparison) and leaves the rest to the slow path
every other outcome takes. What it lets through is a memory hit asked from another event
loop nested in the owner's thread (``trio.run`` inside an asyncio task, or the reverse):
the owner's loop is then stopped inside one of its synchronous steps, so the lookup runs
alone, reads the owner's clock (resolved on entry, not from the running loop), and
returns what the owner would have read at that instant; it moves the entry's recency
and the hit count, writes nothing else and awaits nothing. A miss, and every other
call, from such a loop is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from threading import get_ident
from types import TracebackType
from typing import Any, Self

from ._announce import Announcer
from ._backend import Owner
from ._bus import RedisInvalidationBus
from ._clock import Clock
from ._distributed import RedisSingleFlightCoordinator
from ._exceptions import CacheClosedError
from ._freshness import NO_FRESHNESS, Freshness
from ._invalidation import DropAll, DropKeys, DropTag, ExpireKeys, ExpireTag, InvalidationPath
from ._layer import Layer
from ._lifecycle import Lifecycle
from ._load import LoadPath
from ._options import CircuitBreaker, GracefulDegradation
from ._parts import Parts
from ._read import ReadPath
from ._record import Entry
from ._redis_layer import RedisLayer
from ._single_flight import MISSING, Fetcher
from ._snapshot import snapshot
from ._statistics import CacheStatistics
from ._telemetry import OpenTelemetry
from ._validation import check_key, check_keys, check_layer_ttls, check_tag, check_tags
from ._write import WritePath

_NEW, _OPEN, _CLOSED = "new", "open", "closed"


class CacheStack:
    """A multi-layer cache: layers ordered fastest first, run as actors.

    Construction checks the configuration and does no I/O; ``async with`` starts the
    stack and every call on it must happen inside that block (``CacheClosedError``
    otherwise), from the thread and event loop that entered it: a call from any other
    raises ``RuntimeError`` at once and changes nothing. ``statistics()`` reads from any
    thread.

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
    :param freshness: the default :class:`~layercache.Freshness` of every call and
        write (stale windows, refresh-ahead, fetch timeouts, ...); a ``get`` may
        replace it. Default: entries live their TTL, fetches have no time limit.
    :param random: draws in [0, 1) for ``Freshness(jitter=...)`` (default
        ``random.random``; tests inject their own).
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
        freshness: Freshness | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        checked = _check_layers(layers)
        _check_freshness(freshness)
        if random is not None and not callable(random):
            raise TypeError("random must be a zero-argument callable returning floats in [0, 1)")
        _check_options(
            invalidation_bus, single_flight_coordinator, graceful_degradation,
            circuit_breaker, clock, telemetry,
        )  # fmt: skip
        if single_flight_coordinator is not None and not any(
            isinstance(layer, RedisLayer) for layer in checked
        ):
            raise ValueError(
                "a RedisSingleFlightCoordinator needs a RedisLayer in the stack: the "
                "processes waiting for a load find its value there"
            )
        self.invalidation_bus = invalidation_bus
        self.single_flight_coordinator = single_flight_coordinator
        self.graceful_degradation = graceful_degradation
        self.circuit_breaker = circuit_breaker
        self.telemetry = telemetry
        parts = self._parts = Parts(
            checked,
            bus=invalidation_bus,
            distributed=single_flight_coordinator,
            degradation=graceful_degradation,
            breaker=circuit_breaker,
            telemetry=telemetry,
            freshness=freshness or NO_FRESHNESS,
            **({"random": random} if random is not None else {}),
        )
        self.freshness = parts.freshness
        self.origin = parts.origin
        """This stack's id on the invalidation bus (it ignores its own messages)."""
        announcer = Announcer(parts)
        self._reads = ReadPath(parts)
        self._invalidations = InvalidationPath(parts, announcer)
        self._writes = WritePath(parts, announcer, self._invalidations)
        self._loads = LoadPath(parts, self._reads, self._writes)
        parts.single_flight.bind(self._loads.load, self._reads.read_flights)
        self._lifecycle = Lifecycle(parts, self._invalidations, clock)
        self._state = _NEW
        self._owner: Owner | None = None
        self._fast_read: Callable[[str], object] | None = None
        self._fresh_read: Callable[[str], object] | None = None
        self._fast_thread = 0
        self._fast_hits = 0

    def __repr__(self) -> str:
        names = ", ".join(layer.name for layer in self._parts.layers)
        single_flight = self._parts.single_flight
        return (
            f"<CacheStack {self._state} layers=[{names}] "
            f"loads={single_flight.loads_in_flight} waiters={single_flight.waiters}>"
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start every actor; the calling thread and event loop become the owner.

        :raises RuntimeError: the stack was entered before (from another thread or
            loop than its owner's, the message says so).
        :raises LayerUnavailableError: a remote part cannot start (strict mode).
        """
        if self._state != _NEW:
            if self._owner is not None:
                self._owner.check("CacheStack.__aenter__()")
            raise RuntimeError("a CacheStack can be entered only once; create a new one")
        self._state = _CLOSED  # until every actor is up
        owner = self._owner = Owner()
        await self._lifecycle.start(self.statistics)
        self._state = _OPEN
        local = self._parts.local
        if local:
            self._fast_thread = owner.thread
            self._fast_read = local[0].reader(MISSING, self._parts.single_flight.serving)
            self._fresh_read = local[0].reader(MISSING)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Stop every actor (loads in flight are cancelled).

        :raises RuntimeError: called from another thread or event loop than the owner's
            (the stack goes on running), or on a stack that is not running.
        """
        if self._owner is not None:
            self._owner.check("CacheStack.__aexit__()")
        self._state = _CLOSED
        self._fast_read = self._fresh_read = None
        return await self._lifecycle.stop(exc)

    def _check_open(self, method: str) -> None:
        """Return if ``method`` may run now, here.

        :raises CacheClosedError: the stack is not open.
        :raises RuntimeError: the caller is not on the owner's thread and event loop.
        """
        if self._state != _OPEN:
            if self._state == _NEW:
                raise CacheClosedError("the CacheStack is not open: use it inside `async with`")
            raise CacheClosedError("the CacheStack is closed: its `async with` block has exited")
        assert self._owner is not None
        self._owner.check(method)

    # -- reads -------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        fetcher: Callable[[], Awaitable[Any]] | None = None,
        *,
        ttl: float | Mapping[str, float] | None = None,
        tags: Iterable[str] = (),
        default: Any = None,
        freshness: Freshness | None = None,
    ) -> Any:
        """Return the value for ``key`` from the first layer that has it fresh.

        Faster layers that missed are backfilled. On a full miss, ``fetcher()`` is
        awaited once however many tasks ask at the same moment, its result is stored in
        every layer with ``ttl`` (seconds, or ``{layer name: seconds}``) and ``tags``,
        and returned to all of them. Without a fetcher a miss returns ``default``, and
        only fresh entries answer. A fetched ``None`` is cached like any value.

        ``freshness`` replaces the stack's :class:`~layercache.Freshness` for this call
        (the whole object): with it, a stale entry may answer at once while one
        background refresh runs, or stand in for a fetch that fails or times out.

        :raises TypeError: a key that is not str, a fetcher that is not callable or does
            not return an awaitable, bad ``ttl``/``tags`` types.
        :raises ValueError: an empty or too long key, a TTL that is not positive and
            finite or is over 10**12 seconds, an empty tag.
        :raises CacheClosedError: outside the stack's ``async with`` block.
        :raises RuntimeError: called from another thread or event loop than the one that
            entered the stack (nothing is read or written).
        :raises SerializationError: a fetched value a layer cannot store (nothing is
            written).
        :raises LayerUnavailableError: a layer failed and degradation is off.
        :raises FetchTimeoutError: the fetch ran past ``freshness.hard_timeout``, with
            no stale entry to answer instead.

        Whatever the fetcher raises reaches every caller waiting on that load and is
        not cached (with a stale entry within ``stale_if_error``, they get that).
        """
        # With a fetcher and the stack's freshness, the hot path may also hand out an
        # entry whose refresh runs (see MemoryLayer.reader); otherwise fresh ones only.
        read = self._fast_read if fetcher is not None and freshness is None else self._fresh_read
        if (
            read is not None
            and get_ident() == self._fast_thread
            and type(key) is str
            and ttl is None
            and not tags
            and (fetcher is None or callable(fetcher))
            and (freshness is None or type(freshness) is Freshness)
        ):
            value = read(key)  # a fresh entry, not due for a refresh ahead
            if value is not MISSING:
                self._fast_hits += 1
                return value
        return await self._get_slow(key, fetcher, ttl, tags, default, freshness)

    async def _get_slow(
        self,
        key: object,
        fetcher: Fetcher | None,
        ttl: object,
        tags: object,
        default: Any,
        freshness: object,
    ) -> Any:
        self._check_open("CacheStack.get()")
        checked_key = check_key(key)
        checked_ttl = self._check_ttl(ttl)
        checked_tags = check_tags(tags)
        if fetcher is not None and not callable(fetcher):
            raise TypeError(f"fetcher must be a zero-argument async callable, not {fetcher!r}")
        _check_freshness(freshness)
        chosen = self._parts.freshness if freshness is None else freshness
        assert isinstance(chosen, Freshness)
        return await self._loads.get(
            checked_key, fetcher, checked_ttl, checked_tags, default, chosen
        )

    def _check_ttl(self, ttl: object) -> float | Mapping[str, float] | None:
        if ttl is None:
            return None
        return check_layer_ttls(ttl, [layer.name for layer in self._parts.layers])

    async def get_entry(self, key: str) -> Entry | None:
        """The entry for ``key`` from the first layer that has it, fresh or stale,
        without fetching (faster layers that missed are backfilled), or None."""
        self._check_open("CacheStack.get_entry()")
        return await self._reads.entry(check_key(key))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Return ``{key: value}`` for the keys some layer has; missing keys are left out.

        Reads each layer once for all the keys still missing, and backfills the faster
        layers. Runs no fetcher.
        """
        self._check_open("CacheStack.get_many()")
        return await self._reads.get_many(check_keys(keys))

    # -- writes ------------------------------------------------------------------------

    async def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | Mapping[str, float] | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Store ``value`` under ``key`` in every layer, replacing its tags, aged by the
        stack's freshness (``ttl``: seconds, or ``{layer name: seconds}``).

        :raises SerializationError: a layer cannot encode ``value``; no layer is written.
        """
        self._check_open("CacheStack.set()")
        checked_ttl, checked_tags = self._check_ttl(ttl), check_tags(tags)
        checked_key = check_key(key)  # after them, as set_many checks its keys
        writes = self._writes.encode(checked_key, value, checked_ttl, checked_tags)
        await self._writes.write((checked_key,), writes)

    async def set_many(
        self,
        mapping: Mapping[str, Any],
        *,
        ttl: float | Mapping[str, float] | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Store every item of ``mapping`` in every layer with the same ``ttl`` and ``tags``.

        :raises SerializationError: a layer cannot encode a value; no layer is written.
        """
        self._check_open("CacheStack.set_many()")
        if type(mapping) is not dict and not isinstance(mapping, Mapping):
            raise TypeError(
                f"set_many takes a mapping of key to value, not {type(mapping).__name__}"
            )
        checked_ttl = self._check_ttl(ttl)
        checked_tags = check_tags(tags)
        keys = check_keys(mapping.keys())
        values = {key: mapping[key] for key in keys}
        writes = self._writes.encode_many(values, checked_ttl, checked_tags)
        await self._writes.write(keys, writes)

    # -- invalidations -----------------------------------------------------------------

    async def delete(self, key: str) -> None:
        """Remove ``key`` from every layer (absent keys are fine)."""
        await self._delete((key,), "CacheStack.delete()")

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key in ``keys`` from every layer."""
        await self._delete(keys, "CacheStack.delete_many()")

    async def _delete(self, keys: Iterable[str], method: str) -> None:
        self._check_open(method)
        await self._invalidations.run(DropKeys(check_keys(keys)))

    async def invalidate_by_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag`` from every layer.

        :returns: how many distinct keys were removed, as far as this stack could see.
        """
        self._check_open("CacheStack.invalidate_by_tag()")
        return await self._invalidations.run(DropTag(check_tag(tag)))

    async def expire(self, key: str) -> int:
        """Mark ``key`` stale now in every layer and on every instance (bus), keeping its
        stale window; without one (no stale-while-revalidate or stale-if-error when it
        was written) this is a delete. A load in flight for it stores nothing.

        :returns: 1 if some layer had the key, else 0.
        """
        return await self._expire((key,), "CacheStack.expire()")

    async def expire_many(self, keys: Iterable[str]) -> int:
        """:meth:`expire` for every key in ``keys``.

        :returns: how many distinct keys were found, in any layer.
        """
        return await self._expire(keys, "CacheStack.expire_many()")

    async def _expire(self, keys: Iterable[str], method: str) -> int:
        self._check_open(method)
        return await self._invalidations.run(ExpireKeys(check_keys(keys)))

    async def expire_by_tag(self, tag: str) -> int:
        """:meth:`expire` for every entry carrying ``tag`` (the ones kept stale still
        carry it).

        :returns: how many distinct keys were expired or removed, as far as this stack
            could see.
        """
        self._check_open("CacheStack.expire_by_tag()")
        return await self._invalidations.run(ExpireTag(check_tag(tag)))

    async def clear(self) -> None:
        """Remove everything this stack holds in every layer (only under its prefixes)."""
        self._check_open("CacheStack.clear()")
        await self._invalidations.run(DropAll())

    # -- observation -------------------------------------------------------------------

    def statistics(self) -> CacheStatistics:
        """A frozen snapshot of the stack's counters (see :class:`CacheStatistics`), read
        without I/O; safe from any thread (a metrics exporter's)."""
        return snapshot(self._parts, self._fast_hits, self._state == _OPEN)

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers, fastest first, as given."""
        return self._parts.layers

    @property
    def state(self) -> str:
        """``"new"``, ``"open"`` or ``"closed"``."""
        return self._state


def _check_layers(layers: Iterable[Layer]) -> tuple[Layer, ...]:
    if isinstance(layers, Layer):
        raise TypeError("layers must be a list of layers, e.g. CacheStack([MemoryLayer()])")
    checked = tuple(layers)
    if not checked:
        raise ValueError("a CacheStack needs at least one layer")
    for layer in checked:
        if not isinstance(layer, Layer):
            raise TypeError(f"not a cache layer: {layer!r}")
    names = [layer.name for layer in checked]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique within a stack, got {names}")
    return checked


def _check_options(
    bus: object,
    distributed: object,
    degradation: object,
    breaker: object,
    clock: object,
    telemetry: object,
) -> None:
    if bus is not None and not isinstance(bus, RedisInvalidationBus):
        raise TypeError(f"invalidation_bus must be a RedisInvalidationBus, not {bus!r}")
    if distributed is not None and not isinstance(distributed, RedisSingleFlightCoordinator):
        raise TypeError(
            f"single_flight_coordinator must be a RedisSingleFlightCoordinator, not {distributed!r}"
        )
    if degradation is not None and not isinstance(degradation, GracefulDegradation):
        raise TypeError("graceful_degradation must be a GracefulDegradation")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise TypeError("circuit_breaker must be a CircuitBreaker")
    if clock is not None and not callable(clock):
        raise TypeError("clock must be a zero-argument callable returning seconds")
    if telemetry is not None and not isinstance(telemetry, OpenTelemetry):
        raise TypeError(f"telemetry must be an OpenTelemetry hook, not {telemetry!r}")


def _check_freshness(freshness: object) -> None:
    if freshness is not None and not isinstance(freshness, Freshness):
        raise TypeError(f"freshness must be a Freshness, not {type(freshness).__name__}")
