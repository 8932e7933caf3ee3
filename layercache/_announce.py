"""How a change made here reaches the other stacks on the bus: the stack's side of it.

A change's bus messages travel with the change where they can: when the last remote
layer a change reaches talks to the bus's own server (the *carrier*), the PUBLISH
commands go in the same batch, right after the change, so peers hear one round trip
sooner and never before Redis has it (one connection runs its commands in order).
Otherwise, or when the carried publish was skipped, failed or refused, the listener
publishes them on the bus's own connection after the change.

One deadline per call: a change of one request has the slowest remote layer's
``timeout`` (the bus's own ``timeout`` where no layer has one). An announcement whose
call has used it all (a black-holed Redis made the change wait that long) is not
published then, and not dropped: the listener keeps it and publishes it as soon as
Redis takes it. So is the announcement of a change whose outcome is unknown (a write
that failed after it may have reached Redis), whatever stopped it. Otherwise the publish
has the bus's own ``timeout``. No timer is set per call: the deadline is one reading of
the loop's clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._bus import BusMessage, RedisInvalidationBus
from ._exceptions import LayerUnavailableError
from ._health import Skipped
from ._layer import Layer
from ._parts import Parts
from ._redis_layer import Announcement, RedisLayer


class Announcer:
    """Builds a change's announcement and makes sure it is published once."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._carrier = carrier_of(parts.layers, parts.bus)
        timeouts = [getattr(layer, "timeout", None) for layer in parts.remote]
        known = [timeout for timeout in timeouts if isinstance(timeout, float)]
        bus_timeout = parts.bus.timeout if parts.bus is not None else 1.0
        self._budget = max(known) if known else bus_timeout
        """Seconds a change and its announcement may wait for Redis, together."""

    def deadline(self) -> float:
        """The deadline of a change starting now, on the loop's clock."""
        return self._parts.loop_time() + self._budget

    def announcement(self, messages: Sequence[BusMessage]) -> Announcement | None:
        """The PUBLISH commands for ``messages``, for the carrier to send with the
        change; None without a carrier (or a bus, or messages)."""
        listener = self._parts.listener
        if self._carrier is None or listener is None or not messages:
            return None
        return Announcement(listener.publish_commands(messages))

    def carrier(self, layer: Layer, announce: Announcement | None) -> RedisLayer | None:
        """``layer``, if it is the one that sends ``announce`` with its change."""
        carrier = self._carrier
        return carrier if announce is not None and layer is carrier else None

    def later(self, messages: Sequence[BusMessage]) -> None:
        """Have the listener publish ``messages`` as soon as it can (no await)."""
        listener = self._parts.listener
        if listener is not None and messages:
            listener.publish_later(messages)

    async def send(
        self,
        messages: Sequence[BusMessage],
        deadline: float,
        announce: Announcement | None = None,
        *,
        surely: bool = False,
    ) -> None:
        """Tell the other stacks by ``deadline``, unless ``announce`` already did (with
        the change); what cannot go by then is kept for later.

        ``surely``: the change's outcome is unknown, so its announcement must not be
        lost: kept for later too when the bus fails or is skipped, and nothing raised.

        :raises LayerUnavailableError: the bus failed (strict mode, not ``surely``).
        """
        listener = self._parts.listener
        if listener is None or not messages:
            return
        if announce is not None and announce.sent:
            listener.carried(len(messages))
            return
        if self._parts.loop_time() >= deadline:
            self.later(messages)  # the call's time is up: kept, not waited for
            return
        # Skipped, failed or refused with the change (which may still have published
        # it): once more on the bus's own connection. Peers drop keys twice, harmlessly.
        outcome: object = None
        try:
            # Kept messages are not dropped ones: not counted as such when surely.
            guard = self._parts.guards[listener]
            outcome = await guard.call(listener.publish, messages, write=not surely)
        except LayerUnavailableError:
            if not surely:
                raise
        if surely and (outcome is None or isinstance(outcome, Skipped)):
            self.later(messages)


def carrier_of(layers: Sequence[Layer], bus: RedisInvalidationBus | None) -> RedisLayer | None:
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
