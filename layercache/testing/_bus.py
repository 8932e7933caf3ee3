"""Waiting, without sleeping, for what a stack does in the background: the invalidation
bus's messages, and loads (refreshes included)."""

from __future__ import annotations

from .._listener import InvalidationListener
from .._stack import CacheStack


def _listener(cache: CacheStack) -> InvalidationListener:
    listener = cache._parts.listener
    if listener is None:
        raise RuntimeError("the stack has no invalidation bus, or is not running")
    return listener


async def invalidations_received(cache: CacheStack, count: int) -> None:
    """Return once ``cache`` has applied ``count`` bus messages from other stacks in
    all (its ``statistics().invalidations_received``): what another instance changed
    is then gone from its memory layers. Bound it with ``anyio.fail_after``.

    :raises RuntimeError: the stack has no bus or is not running.
    """
    await _listener(cache).received.reached(count)


async def bus_resubscribed(cache: CacheStack, count: int = 1) -> None:
    """Return once ``cache``'s bus subscription has been re-established ``count`` times
    in all (after each, its local layers were cleared).

    :raises RuntimeError: the stack has no bus or is not running.
    """
    await _listener(cache).resubscriptions.reached(count)


async def loads_settled(cache: CacheStack) -> None:
    """Return once ``cache`` runs no load: a refresh that answered its callers early
    has stored its result (or given up), a fetch left to finish by ``soft_timeout`` has
    ended. Bound it with ``anyio.fail_after``."""
    await cache._parts.single_flight.settled()
