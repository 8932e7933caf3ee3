"""Starting and stopping a stack's actors, in its own task group.

On entry every part is attached (a part serves one stack at a time), then the actors
start in order, each under a :class:`~._supervisor.Supervisor` and, for the remote
parts, with the health guard its requests go through: the layers, the single-flight
actor, the distributed coordinator (then the check that it shares the lock layer's
server), the bus listener (started once SUBSCRIBE is acknowledged). Anything that fails
on the way stops what started and detaches everything.

On exit the loads go first (cancelled, and drained while the actors they clean up
through still run: a lock holder gives its lock back), then every actor is cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from ._clock import Clock, deadline_clock, loop_clock
from ._health import LayerHealth
from ._invalidation import InvalidationPath
from ._listener import InvalidationListener
from ._parts import Parts
from ._statistics import CacheStatistics
from ._supervisor import Supervisor

DRAIN_TIMEOUT = 5.0
"""Seconds the stack's exit gives its cancelled loads to clean up (release locks)."""


class _Attachable(Protocol):
    def detach(self) -> None: ...


class Lifecycle:
    """Brings one stack's actors up and down."""

    def __init__(self, parts: Parts, invalidations: InvalidationPath, clock: Clock | None) -> None:
        self._parts = parts
        self._invalidations = invalidations
        self._clock = clock
        self._task_group: TaskGroup | None = None

    async def start(self, statistics: Callable[[], CacheStatistics]) -> None:
        """Attach every part and start every actor; on failure, undo it all and raise."""
        parts = self._parts
        attached: list[_Attachable] = []
        try:
            parts.clock = self._clock or loop_clock()
            parts.loop_time = deadline_clock()
            if parts.telemetry is not None:
                parts.telemetry.attach(statistics)
                attached.append(parts.telemetry)
            if parts.bus is not None:
                parts.bus.attach()
                attached.append(parts.bus)
            if parts.distributed is not None and parts.lock_layer is not None:
                parts.distributed.attach(parts.lock_layer.keys)
                attached.append(parts.distributed)
            for layer in parts.layers:
                layer.attach(parts.clock)
                attached.append(layer)
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
        except BaseException:
            for part in attached:
                part.detach()
            raise
        self._task_group = task_group
        try:
            await self._start_actors(task_group)
        except BaseException as error:
            await self.stop(error)
            raise

    async def _start_actors(self, task_group: TaskGroup) -> None:
        parts = self._parts
        parts.guards.clear()
        for layer in parts.layers:
            await self._supervise(task_group, layer, layer.name, f"layer {layer.name!r}", layer.run)
        single_flight = Supervisor("single-flight", parts.single_flight.run)
        await task_group.start(single_flight.run, name="layercache single-flight")
        distributed = parts.distributed
        if distributed is not None and parts.lock_layer is not None:
            await self._supervise(
                task_group, distributed, distributed.name, "single-flight coordinator",
                distributed.run,
            )  # fmt: skip
            await distributed.check_same_server(parts.lock_layer)
        if parts.bus is not None:
            listener = InvalidationListener(
                parts.bus,
                parts.origin,
                apply=self._invalidations.receive,
                on_resubscribed=self._invalidations.resubscribed,
                start_disconnected=parts.graceful,
            )
            await self._supervise(
                task_group, listener, listener.name, "invalidation listener", listener.run
            )
            parts.listener = listener

    async def _supervise(
        self,
        task_group: TaskGroup,
        part: object,
        name: str,
        label: str,
        run: Callable[..., Awaitable[None]],
    ) -> None:
        """Start ``run``, an actor of ``part``, under a supervisor, with the health
        guard its requests go through (a local layer's only reports its state)."""
        parts = self._parts
        health = LayerHealth(
            name, degradation=parts.degradation, breaker=parts.breaker, clock=parts.clock
        )
        parts.guards[part] = health
        supervisor = Supervisor(label, run, on_crash=health.crashed, on_restart=health.restarted)
        await task_group.start(supervisor.run, name=f"layercache {label}")

    async def stop(self, exc: BaseException | None) -> bool | None:
        """Drain the loads, cancel every actor, detach every part."""
        parts = self._parts
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            raise RuntimeError("the stack is not running")
        try:
            # Loads first, while the actors they clean up through are still running.
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + DRAIN_TIMEOUT):
                await parts.single_flight.drain()
            task_group.cancel_scope.cancel()
            if exc is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
                # The cancellation may be the task group's own: it must see it.
                return await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            # Anything else propagates as it is, not wrapped in an exception group.
            await task_group.__aexit__(None, None, None)
            return None
        finally:
            for layer in parts.layers:
                layer.detach()
            for part in (parts.bus, parts.distributed, parts.telemetry):
                if part is not None:
                    part.detach()
