"""What a stack is made of, wired once: its layers in the roles the paths need, its
remote parts' health guards, the single-flight actor, the bus listener, the counters.

The stack builds one :class:`Parts` from its checked arguments; the read, load, write
and invalidation paths share it. Nothing here does I/O: the lifecycle fills in the
clock, the guards and the listener when the stack starts.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence

from ._bus import RedisInvalidationBus
from ._clock import Clock
from ._distributed import RedisSingleFlightCoordinator
from ._freshness import NO_FRESHNESS, Backoff, Freshness
from ._health import LayerHealth
from ._layer import Layer, LocalLayer
from ._listener import InvalidationListener
from ._options import CircuitBreaker, GracefulDegradation
from ._redis_layer import RedisLayer
from ._single_flight import SingleFlight
from ._snapshot import Tally
from ._telemetry import OpenTelemetry


def _not_started() -> float:
    raise RuntimeError("the CacheStack has not started")


class Parts:
    """A stack's parts and the roles of its layers."""

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        bus: RedisInvalidationBus | None,
        distributed: RedisSingleFlightCoordinator | None,
        degradation: GracefulDegradation | None,
        breaker: CircuitBreaker | None,
        telemetry: OpenTelemetry | None,
        freshness: Freshness = NO_FRESHNESS,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.layers = tuple(layers)
        self.freshness = freshness
        """The stack's default :class:`~layercache.Freshness` (a call may replace it)."""
        self.random = random
        """Draws in [0, 1) for ``jitter`` (injectable, for tests)."""
        self.backoff = Backoff()
        """Keys whose fetch failed lately (``error_backoff``)."""
        self.bus = bus
        self.distributed = distributed
        self.degradation = degradation
        self.breaker = breaker
        self.telemetry = telemetry
        self.origin = uuid.uuid4().hex
        """This stack's id on the invalidation bus (it ignores its own messages)."""
        leading: list[LocalLayer] = []
        for layer in self.layers:
            if not isinstance(layer, LocalLayer):
                break
            leading.append(layer)
        self.local: tuple[LocalLayer, ...] = tuple(leading)
        """The in-process layers in front: read synchronously, in the caller's task."""
        self.every_local = tuple(layer for layer in self.layers if isinstance(layer, LocalLayer))
        """Every in-process layer, leading or not: what the bus invalidates."""
        self.remote = tuple(layer for layer in self.layers if not isinstance(layer, LocalLayer))
        """The layers that need I/O, in order."""
        behind = self.layers[len(self.local) :]
        self.direct: RedisLayer | None = (
            behind[0] if len(behind) == 1 and isinstance(behind[0], RedisLayer) else None
        )
        """The one Redis layer behind the local ones, if that is all there is: a lone
        read goes to it directly (see the read path)."""
        redis = [layer for layer in self.layers if isinstance(layer, RedisLayer)]
        self.lock_layer: RedisLayer | None = redis[-1] if distributed and redis else None
        """The Redis layer whose server holds the distributed coordinator's locks."""
        self.single_flight = SingleFlight()
        self.single_flight.direct_reads = self.direct is not None
        self.tally = Tally([layer.name for layer in self.layers])
        self.clock: Clock = _not_started
        """The stack's clock (TTLs, health windows): the loop's, or the one given."""
        self.loop_time: Clock = _not_started
        """The running loop's own clock, for deadlines handed to the transport."""
        self.guards: dict[object, LayerHealth] = {}
        """Each remote part's (layer, bus listener, coordinator) health guard."""
        self.listener: InvalidationListener | None = None

    @property
    def graceful(self) -> bool:
        return self.degradation is not None
