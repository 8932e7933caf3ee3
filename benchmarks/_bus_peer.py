"""The receiving instance B of bench_bus.py's two-process rounds.

Usage: python _bus_peer.py URL CHANNEL (raw | stack | stack+redis) PREFIX BACKEND

It says ``ready`` once subscribed, then prints one line per invalidation it receives:
the ``time.perf_counter()`` at which it had it (raw: the subscriber has the message;
stack: B's memory layer has dropped the key). ``perf_counter`` is the system's
monotonic clock, so the parent can subtract its own readings. A stack puts the key back
into its memory layer after each round, ready for the next.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import anyio

from layercache import CacheStack, MemoryLayer, Record, RedisInvalidationBus, RedisLayer
from layercache._bus import BusMessage
from layercache._redis._address import parse_redis_url
from layercache._redis._connection import Connection, pack


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Subscriber:
    """A bare SUBSCRIBE on a connection of its own (the raw peer's receiving side)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, url: str, channel: str) -> Subscriber:
        connection = await Connection.open(parse_redis_url(url))
        await connection.send(pack([("SUBSCRIBE", channel)]))
        await connection.receive()
        return cls(connection)

    async def had_it_at(self) -> float:
        """When the next message arrived."""
        while True:
            for reply in await self.connection.receive():
                if isinstance(reply, list) and reply[0] == b"message":
                    return time.perf_counter()


def layers(url: str, prefix: str, with_redis: bool) -> list[MemoryLayer | RedisLayer]:
    """Each instance's layers: memory, and with ``with_redis`` the shared Redis layer."""
    if with_redis:
        return [MemoryLayer(), RedisLayer(url=url, prefix=prefix)]
    return [MemoryLayer()]


def stamp_invalidations(b: CacheStack, stamped: Callable[[float], None]) -> None:
    """Have B hold key k in its memory layer, and call ``stamped(when)`` each time a
    message made it drop k (then hold k again, for the next round)."""
    listener = b._parts.listener
    assert listener is not None
    memory = b.layers[0]
    assert isinstance(memory, MemoryLayer)
    apply = listener._apply

    def apply_and_stamp(message: BusMessage) -> None:
        apply(message)
        applied = time.perf_counter()
        assert "k" not in memory.get_many_nowait(["k"])
        memory.write_many_nowait({"k": Record(0, None, None, refresh_at=None)})
        stamped(applied)

    listener._apply = apply_and_stamp
    memory.write_many_nowait({"k": Record(0, None, None, refresh_at=None)})


async def raw(url: str, channel: str) -> None:
    subscriber = await Subscriber.open(url, channel)
    say("ready")
    while True:
        say(repr(await subscriber.had_it_at()))


async def stack(url: str, channel: str, prefix: str, with_redis: bool) -> None:
    bus = RedisInvalidationBus(url, channel=channel)
    async with CacheStack(layers(url, prefix, with_redis), invalidation_bus=bus) as b:
        stamp_invalidations(b, lambda applied: say(repr(applied)))
        say("ready")
        await anyio.sleep_forever()


def main() -> None:
    url, channel, mode, prefix, backend = sys.argv[1:6]
    if mode == "raw":
        anyio.run(raw, url, channel, backend=backend)
    else:
        anyio.run(stack, url, channel, prefix, mode == "stack+redis", backend=backend)


if __name__ == "__main__":
    main()
