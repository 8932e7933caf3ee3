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

import anyio

from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer, Write
from layercache._bus import BusMessage
from layercache._redis._address import parse_redis_url
from layercache._redis._connection import Connection, pack


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def raw(url: str, channel: str) -> None:
    subscriber = await Connection.open(parse_redis_url(url))
    await subscriber.send(pack([("SUBSCRIBE", channel)]))
    await subscriber.receive()
    say("ready")
    while True:
        for reply in await subscriber.receive():
            if isinstance(reply, list) and reply[0] == b"message":
                say(repr(time.perf_counter()))


async def stack(url: str, channel: str, prefix: str, with_redis: bool) -> None:
    layers: list[MemoryLayer | RedisLayer] = [MemoryLayer()]
    if with_redis:
        layers.append(RedisLayer(url=url, prefix=prefix))
    async with CacheStack(layers, invalidation_bus=RedisInvalidationBus(url, channel=channel)) as b:
        listener = b._listener
        assert listener is not None
        memory = b.layers[0]
        assert isinstance(memory, MemoryLayer)
        apply = listener._apply

        def apply_and_stamp(message: BusMessage) -> None:
            apply(message)
            applied = time.perf_counter()
            assert "k" not in memory.get_many_nowait(["k"])
            memory.write_many_nowait([Write("k", 0, None)])  # held again for the next round
            say(repr(applied))

        listener._apply = apply_and_stamp
        memory.write_many_nowait([Write("k", 0, None)])
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
