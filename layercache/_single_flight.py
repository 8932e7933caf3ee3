"""The single-flight actor: one load per key in this process, and the fences that keep
stale writes out. (Across processes, :mod:`._distributed`'s coordinator adds a lock in
Redis to the loads this one runs.)

Owns: the loads in flight (at most one per key and kind: a *fetching* load, started by a
``get`` with a fetcher, and a *reading* load, which only reads the slower layers), the
number of callers waiting on each, and for each load whether it went stale.

Takes no messages over a channel: its task is the task group every load runs in, which
lives in the stack's task group. The stack's paths call its synchronous handlers
(``join``, ``launch``, ``gather``, ``complete``, the fences) from the caller's task, the
transport's reader task (a direct read's completion) or the listener's (a fence for a
bus message):
one thread, and no handler awaits, so they never interleave. ``join`` only registers a
flight (so the handlers run without a loop, in tests); ``launch`` starts its work, a
load's task straight into the task group, since a channel hop per load cost more than
the load.
No load ever runs in a caller's task, so cancelling a caller (the first one included)
cannot cancel a load; a load whose callers have all gone runs to completion and fills
the cache; the stack's exit cancels every load, and their callers get
:class:`~layercache.CacheClosedError`.

Fences: a ``set``, ``delete``, tag invalidation or ``clear`` that runs while a load is in
flight marks the load *stale*. A stale load still hands its result to its callers,
who asked before the change completed, but does not write it into any layer, where
it would overwrite the newer state. Every fence also advances ``fence_count``: the read
path's one backfill rule compares it (see :mod:`._read`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._backend import Event, event_type
from ._exceptions import CacheClosedError
from ._freshness import NO_FRESHNESS, Freshness
from ._record import Record, Serving
from ._reply import ReplySlot

Fetcher = Callable[[], Awaitable[object]]
TTL = float | Mapping[str, float] | None
"""A write's TTL: seconds, per layer name (the others keep their default), or None."""
Outcome = tuple[object, str | None]
"""A load's result: the value (or :data:`MISSING`) and the layer it came from."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: object = _Missing()
"""What a reading load returns when no layer has the key."""


class Flight:
    """One load in flight, and the reply slot its callers wait on."""

    __slots__ = (
        "context",
        "fetcher",
        "final",
        "found",
        "freshness",
        "key",
        "reply",
        "served_stale",
        "stale",
        "tags",
        "ttl",
        "waiters",
        "watched",
        "watching",
    )

    def __init__(
        self,
        key: str,
        fetcher: Fetcher | None,
        ttl: TTL,
        tags: frozenset[str],
        done: Event | None = None,
        freshness: Freshness = NO_FRESHNESS,
    ) -> None:
        self.key = key
        self.fetcher = fetcher
        self.ttl = ttl
        self.tags = tags
        self.freshness = freshness
        self.waiters = 0
        self.stale = False
        self.served_stale = False
        """Its callers were answered with a stale entry (each counts a stale hit)."""
        self.watched = tags
        """The tags whose invalidation makes it stale: its own, and those of the entry
        it refreshes (see :meth:`watch`)."""
        self.watching = False
        """Set once the load knows the tags of what it found (:meth:`watch`): until
        then any tag invalidation fences it."""
        self.final: ReplySlot[Outcome] | None = None
        """Set by :meth:`answer_early`: the load's own result, for callers who join
        after the early answer and for whom that entry is not good enough."""
        self.found: tuple[Record, str] | None = None
        """The entry the load found but did not take as fresh (a ``Record`` and its
        layer's name), which it may answer with: what a joiner judges."""
        # The first caller's context variables (request ids, tracing spans, sessions):
        # the fetcher sees them as if the caller had spawned the load itself.
        self.context = contextvars.copy_context()
        self.reply: ReplySlot[Outcome] = ReplySlot(done)

    def answer_early(self, outcome: Outcome, new_event: Event) -> None:
        """Answer the callers now with ``outcome`` (the entry ``found``), while the load
        goes on: joiners for whom that entry will not do wait on ``final``."""
        if self.reply.done:
            return
        self.final = ReplySlot(new_event)
        self.reply.set(outcome)

    def finish(self, outcome: Outcome | BaseException) -> None:
        """The load's end: its result (or error) for whoever still waits."""
        for slot in (self.reply, self.final):
            if slot is None:
                continue
            if isinstance(outcome, BaseException):
                slot.fail(outcome)
            else:
                slot.set(outcome)

    def watch(self, tags: frozenset[str]) -> None:
        """Be fenced by ``tags`` too (the tags of an entry found, before the fetch that
        replaces it starts): data fetched after their invalidation began may be old.
        From now on only the watched tags fence it."""
        self.watching = True
        if not tags <= self.watched:
            self.watched = self.watched | tags

    def __repr__(self) -> str:
        kind = "fetch" if self.fetcher is not None else "read"
        return f"<Flight {kind} {self.key!r} waiters={self.waiters} stale={self.stale}>"


Load = Callable[[Flight], Awaitable[Outcome]]
ReadMany = Callable[[list[Flight]], Awaitable[list[Outcome]]]


async def _unbound(flight: object) -> Any:
    raise RuntimeError("SingleFlight.bind() was not called")


class SingleFlight:
    """Single-flight for one stack: loads run :meth:`bind`'s ``load`` (the load path),
    batched reads its ``read_many`` (the read path)."""

    def __init__(self, new_event: Callable[[], Event] = anyio.Event) -> None:
        """``new_event`` makes each flight's reply event (the running loop's own class
        once the actor runs; any event-like class where no loop runs, in unit tests)."""
        self._load: Load = _unbound
        self._read_many: ReadMany = _unbound
        self._read_batch: list[Flight] | None = None
        self.direct_reads = False
        """Set by a stack whose slower part is one layer that can complete reads by
        callback: :meth:`launch` then leaves new reading flights to their first caller,
        who reads directly when the layer is idle (finishing with :meth:`complete`, no
        task) or else hands the flight to :meth:`gather`."""
        self._flights: dict[tuple[str, bool], Flight] = {}
        self._loads: TaskGroup | None = None
        self._drained: anyio.Event | None = None
        self._new_event = new_event
        self.fence_count = 0
        """Grows with every fence; a reader that saw it unchanged saw no invalidation."""
        self.background = 0
        """Loads that answered their callers and go on refreshing (see ``_load``)."""
        self.serving: dict[str, Serving] = {}
        """Keys whose early or stale entry in the first memory layer the hot path may
        hand out while their refresh runs (see :meth:`serve`)."""
        self.stale_served = 0
        """Stale hits the hot path answered under grants since withdrawn."""
        self._tasks = 0
        self._settled: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<SingleFlight loads={len(self._flights)} waiters={self.waiters}>"

    def bind(self, load: Load, read_many: ReadMany) -> None:
        """Give the procedures a load with a fetcher and a batch of reads run."""
        self._load = load
        self._read_many = read_many

    @property
    def loads_in_flight(self) -> int:
        return len(self._flights)

    @property
    def waiters(self) -> int:
        return sum(flight.waiters for flight in self._flights.values())

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        self._new_event = event_type()  # one per load: resolved once
        drained = self._drained = anyio.Event()
        try:
            async with anyio.create_task_group() as loads:
                self._loads = loads
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._loads = None
            self._read_batch = None
            closed = CacheClosedError("the CacheStack exited while this load was running")
            for flight in self._flights.values():
                flight.reply.fail(closed)
            self._flights.clear()
            drained.set()
        # Drained by the stack on its way out: stay until the stack cancels every actor
        # (returning would have the supervisor start a new run).
        await anyio.sleep_forever()

    async def drain(self) -> None:
        """Cancel every load and wait until all have finished, their clean-up included
        (a distributed lock holder gives its lock back): the stack's first step out,
        while the other actors still run."""
        loads, drained = self._loads, self._drained
        if loads is None or drained is None:
            return
        loads.cancel_scope.cancel()
        await drained.wait()

    # -- synchronous handlers ----------------------------------------------------

    def join(
        self,
        key: str,
        fetcher: Fetcher | None,
        ttl: TTL,
        tags: frozenset[str],
        freshness: Freshness = NO_FRESHNESS,
    ) -> tuple[Flight, bool]:
        """Return the load in flight for ``key`` of this kind, registering a new one if
        there is none: then the flag is True, and the caller :meth:`launch` es it.

        Later callers share the first caller's fetcher, ``ttl``, ``tags`` and
        ``freshness``; a load that answered early (a stale or early value) and goes on
        refreshing is joined too: its later callers get that answer at once.
        """
        slot = (key, fetcher is not None)
        flight = self._flights.get(slot)
        if flight is not None and not flight.stale:
            return flight, False
        # A stale load answers only those who asked before the change: a caller
        # arriving after it starts a new load (the old one forgets its slot).
        flight = Flight(key, fetcher, ttl, tags, self._new_event(), freshness)
        self._flights[slot] = flight
        return flight, True

    def launch(self, flight: Flight) -> bool:
        """Start the work of a flight :meth:`join` just registered: a fetching load as a
        task, a reading one into the next batch; or, with direct reads, nothing: True,
        the caller reads it itself. Outside a running stack the flight fails at once.
        """
        loads = self._loads
        if loads is None:
            self.complete(flight, CacheClosedError("the CacheStack is not running"))
            return False
        if flight.fetcher is not None:
            # Started straight into the loads' task group: a load costs one task, not a
            # message to an actor and then a task.
            loads.start_soon(self._run_load, flight, name="layercache load")
            return False
        if self.direct_reads:
            return True
        self.gather(flight)
        return False

    def gather(self, flight: Flight) -> None:
        """Add a reading flight to the next read batch.

        Reads gather: the first starts a batch task; every read that arrives before that
        task runs joins its batch, sharing one request per slower layer.
        """
        loads = self._loads
        if loads is None:
            self.complete(flight, CacheClosedError("the CacheStack is not running"))
            return
        if self._read_batch is None:
            self._read_batch = []
            loads.start_soon(self._run_reads, name="layercache reads")
        self._read_batch.append(flight)

    def start(self, function: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        """Run ``function(*args)`` as a task of the loads' group (rare follow-up work)."""
        loads = self._loads
        if loads is not None:
            loads.start_soon(function, *args)

    def complete(self, flight: Flight, outcome: Outcome | BaseException) -> None:
        """Finish a flight that has no task of its own (a direct read, or one that could
        not start): answer its callers and forget it."""
        if isinstance(outcome, BaseException):
            flight.reply.fail(outcome)
        else:
            flight.reply.set(outcome)
        slot = (flight.key, flight.fetcher is not None)
        if self._flights.get(slot) is flight:
            del self._flights[slot]
            self._maybe_settled()

    def serve(self, key: str, until: float, stale: bool) -> Serving:
        """Let the hot path hand out ``key``'s entry in the first memory layer until
        ``until`` while its refresh runs; withdraw it with :meth:`unserve`."""
        self._withdraw(key)
        granted = self.serving[key] = Serving(until, stale)
        return granted

    def unserve(self, key: str, granted: Serving) -> None:
        if self.serving.get(key) is granted:
            self._withdraw(key)

    def _withdraw(self, key: str) -> None:
        granted = self.serving.pop(key, None)
        if granted is not None and granted.stale:
            self.stale_served += granted.hits

    def fence_keys(self, keys: Iterable[str]) -> None:
        self.fence_count += 1
        flights = self._flights
        if not flights and not self.serving:
            return
        for key in keys:
            self._withdraw(key)  # a fenced refresh leaves nothing to serve
            for fetching in (True, False):
                flight = flights.get((key, fetching))
                if flight is not None:
                    flight.stale = True

    def fence_tag(self, tag: str) -> None:
        # A reading load learns its entry's tags only once it finds it, so every
        # reading load is fenced: the cost is one skipped backfill.
        self.fence_count += 1
        # So is a fetching load still looking at the layers (see Flight.watching).
        for flight in self._flights.values():
            if flight.fetcher is None or not flight.watching or tag in flight.watched:
                flight.stale = True
                if flight.fetcher is not None:
                    self._withdraw(flight.key)

    def fence_all(self) -> None:
        self.fence_count += 1
        for flight in self._flights.values():
            flight.stale = True
        for key in list(self.serving):
            self._withdraw(key)

    # -- waiting and loading -------------------------------------------------------

    def event(self) -> Event:
        """A new event of the running loop's class."""
        return self._new_event()

    async def wait(self, flight: Flight, final: bool = False) -> Outcome:
        """Wait for ``flight``'s answer (``final``: its load's own result, past an
        early answer). Cancelling the wait leaves the load running."""
        slot = flight.final if final and flight.final is not None else flight.reply
        flight.waiters += 1
        try:
            return await slot.wait()
        finally:
            flight.waiters -= 1

    async def _run_reads(self) -> None:
        """One batch of reads. Batches run in tasks of their own, so a slow batch never
        holds up the next (a caller waits at most one layer timeout)."""
        self._tasks += 1
        flights, self._read_batch = self._read_batch or [], None
        try:
            outcomes = await self._read_many(flights)
        except anyio.get_cancelled_exc_class():
            closed = CacheClosedError("the CacheStack exited while this read was running")
            for flight in flights:
                flight.reply.fail(closed)
            raise
        except Exception as error:
            for flight in flights:
                flight.reply.fail(error)
        else:
            for flight, outcome in zip(flights, outcomes, strict=True):
                flight.reply.set(outcome)
        finally:
            for flight in flights:
                if self._flights.get((flight.key, False)) is flight:
                    del self._flights[(flight.key, False)]
            self._task_ended()

    async def settled(self) -> None:
        """Return once no load or batch of reads runs (for tests: a refresh that
        answered early has then stored its result, or given up)."""
        while self._tasks or self._flights:
            if self._settled is None or self._settled.is_set():
                self._settled = anyio.Event()
            await self._settled.wait()

    def _task_ended(self) -> None:
        self._tasks -= 1
        self._maybe_settled()

    def _maybe_settled(self) -> None:
        if not self._tasks and not self._flights and self._settled is not None:
            self._settled.set()

    async def _run_load(self, flight: Flight) -> None:
        self._tasks += 1
        for variable, value in flight.context.items():
            variable.set(value)
        try:
            outcome = await self._load(flight)
        except anyio.get_cancelled_exc_class():
            flight.finish(CacheClosedError("the CacheStack exited while this load was running"))
            raise
        except Exception as error:
            # The load's error belongs to its callers, never to the stack.
            flight.finish(error)
        except BaseException:
            flight.finish(CacheClosedError("the load was interrupted"))
            raise
        else:
            flight.finish(outcome)
        finally:
            slot = (flight.key, flight.fetcher is not None)
            if self._flights.get(slot) is flight:
                del self._flights[slot]
            self._task_ended()
