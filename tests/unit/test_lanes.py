"""Which connection a Redis layer sends on (``Lanes``): the main one, and the spare only
while the main one hauls a large transfer. Stand-in transports, no sockets."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from layercache._redis._lanes import Lanes
from layercache._redis._transport import IdleSignal, Transport

pytestmark = pytest.mark.anyio


class FakeTransport:
    def __init__(self, signal: IdleSignal) -> None:
        self.signal = signal
        self.idle = True
        self.hauling = False
        self.connected = True
        self.answered = 0


def lanes(spare: bool = True) -> tuple[Lanes, FakeTransport, FakeTransport]:
    signal = IdleSignal()
    main, other = FakeTransport(signal), FakeTransport(signal)
    made = Lanes(cast(Any, main), cast(Transport, other) if spare else None)
    return made, main, other


def test_the_main_lane_while_it_is_idle() -> None:
    made, main, _ = lanes()
    assert made.free() is cast(Any, main)


def test_a_busy_main_lane_is_waited_for_so_requests_batch() -> None:
    made, main, _ = lanes()
    main.idle = False
    assert made.free() is None


def test_the_spare_while_the_main_lane_hauls() -> None:
    made, main, spare = lanes()
    main.idle, main.hauling = False, True
    assert made.free() is cast(Any, spare)
    spare.idle = False  # busy with a batch: wait for it
    assert made.free() is None
    spare.idle, spare.connected = True, False  # not connected: wait for the main one
    assert made.free() is None


def test_no_spare_no_second_lane() -> None:
    made, main, _ = lanes(spare=False)
    main.idle, main.hauling = False, True
    assert made.free() is None


def test_answered_counts_both_lanes() -> None:
    made, main, spare = lanes()
    main.answered, spare.answered = 3, 4
    assert made.answered == 7


async def test_a_waiting_sender_takes_the_spare_once_the_main_lane_hauls() -> None:
    made, main, spare = lanes()
    main.idle = False
    got: list[object] = []

    async def wait() -> None:
        got.append(await made.wait_free())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        main.hauling = True
        main.signal.notify()  # what the transport does as a large reply comes in
    assert got == [cast(Any, spare)]
