"""Two connections to one server, so a large transfer does not hold up the rest.

Replies on a connection come in order: a request sent behind a 100 MB value waits until
the value has moved, however small it is. A Redis layer on ``url=`` therefore keeps a
second connection, the *spare*: while the main one is hauling a large transfer (see
:attr:`~._transport.Transport.hauling`), the layer's next batches go to the spare, and
back to the main connection once it is idle again. Otherwise the spare stays unused, so
batching is as before: while a round trip is under way on the main connection, requests
gather and go out together after it. A ``client=`` layer has one lane (its client's
pool has connections of its own).

The two transports share one :class:`~._transport.IdleSignal`, so a task waiting for a
lane wakes for a change on either.
"""

from __future__ import annotations

from ._adapter import ClientTransport
from ._transport import Transport


class Lanes:
    """The transports a layer sends on: ``main``, and a ``spare`` for ``url=``."""

    __slots__ = ("main", "spare")

    def __init__(self, main: Transport | ClientTransport, spare: Transport | None = None) -> None:
        assert spare is None or spare.signal is main.signal
        self.main = main
        self.spare = spare

    def __repr__(self) -> str:
        return f"<Lanes main={self.main!r} spare={self.spare!r}>"

    @property
    def connected(self) -> bool:
        return self.main.connected

    @property
    def answered(self) -> int:
        """Batches answered on every lane (see ``Transport.answered``)."""
        spare = self.spare
        return self.main.answered + (spare.answered if spare is not None else 0)

    def free(self) -> Transport | ClientTransport | None:
        """The lane to send on now: the main one when idle; the spare, when idle and
        connected, while the main one hauls a large transfer; None: wait."""
        main = self.main
        if main.idle:
            return main
        spare = self.spare
        if spare is not None and main.hauling and spare.idle and spare.connected:
            return spare
        return None

    async def wait_free(self) -> Transport | ClientTransport:
        """Return a lane to send on, once there is one (at once if there is)."""
        lane = self.free()
        while lane is None:
            await self.main.signal.wait(lambda: self.free() is None)
            lane = self.free()
        return lane
