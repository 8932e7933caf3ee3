"""How a change made here reaches the other stacks on the bus: the stack's side of it.

A change's bus messages travel with the change where they can: when the last remote
layer a change reaches talks to the bus's own server (the *carrier*), the PUBLISH
commands go in the same batch, right after the change, so peers hear one round trip
sooner and never before Redis has it (one connection runs its commands in order).
Otherwise, or when the carried publish was skipped, failed or refused, the listener
publishes them on the bus's own connection after the change.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._bus import BusMessage, RedisInvalidationBus
from ._layer import Layer
from ._parts import Parts
from ._redis_layer import Announcement, RedisLayer


class Announcer:
    """Builds a change's announcement and makes sure it is published once."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._carrier = carrier_of(parts.layers, parts.bus)

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

    async def send(
        self, messages: Sequence[BusMessage], announce: Announcement | None = None
    ) -> None:
        """Tell the other stacks, unless ``announce`` already did (with the change)."""
        listener = self._parts.listener
        if listener is None or not messages:
            return
        if announce is not None and announce.sent:
            listener.carried(len(messages))
            return
        # Skipped, failed or refused with the change (which may still have published
        # it): once more on the bus's own connection. Peers drop keys twice, harmlessly.
        await self._parts.guards[listener].call(listener.publish, messages, write=True)


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
