"""The invalidation bus without a server: the message codec, and what a stack does with
a bus before any message travels (its checks, the layer that carries its messages, a
bus that cannot reach its server). Stacks keeping each other's L1 consistent over a
real redis-server are in tests/integration/test_bus.py.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import pytest

from layercache import (
    CacheStack,
    GracefulDegradation,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
)
from layercache._announce import carrier_of
from layercache._bus import (
    MAX_MESSAGE,
    BusMessage,
    Rejected,
    decode,
    encode,
    origin_marker,
    split_keys,
)
from layercache._invalidation import DropKeys, DropTag, ExpireKeys, ExpireTag, from_message
from layercache._validation import MAX_KEY_LENGTH

from ..helpers import BAD_DURATIONS

SECRET = b"a shared secret of some length"


# -- the codec --------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET])
def test_messages_round_trip(secret: bytes | None) -> None:
    for message in (
        BusMessage("origin", "keys", ("a", "ключ", "x:y")),
        BusMessage("origin", "tag", tag="author:7"),
        BusMessage("origin", "clear"),
        BusMessage("origin", "expire-keys", ("a", "ключ")),
        BusMessage("origin", "expire-tag", tag="author:7"),
    ):
        assert decode(encode(message, secret), secret) == message


@pytest.mark.parametrize("secret", [None, SECRET])
def test_a_stack_recognises_its_own_messages_without_decoding(secret: bytes | None) -> None:
    ours, theirs = origin_marker("a" * 32), origin_marker("b" * 32)
    for message in (
        BusMessage("a" * 32, "keys", ("k",)),
        BusMessage("a" * 32, "tag", tag="t"),
        BusMessage("a" * 32, "clear"),
        BusMessage("a" * 32, "expire-keys", ("k",)),
        BusMessage("a" * 32, "expire-tag", tag="t"),
    ):
        data = encode(message, secret)
        assert decode(data, secret, ours) is None
        assert decode(data, secret, theirs) == message
        assert decode(data, secret) == message
    forged = encode(BusMessage("a" * 32, "clear"), b"another secret")
    assert decode(forged, secret, ours) is None  # skipped, as rejecting it would
    for garbage in (b"", b"LCI1", b"LCI1S", b"junk" * 10, "text", None):
        with pytest.raises(Rejected):
            decode(garbage, secret, ours)


def _rejection(data: object, secret: bytes | None = SECRET) -> str:
    with pytest.raises(Rejected) as caught:
        decode(data, secret)
    return caught.value.reason


def test_signed_bus_rejects_unsigned_forged_and_edited_messages() -> None:
    message = BusMessage("evil", "clear")
    assert _rejection(encode(message, None)) == "unsigned"
    assert _rejection(encode(message, b"another secret")) == "forged"
    genuine = encode(BusMessage("peer", "keys", ("a",)), SECRET)
    edited = genuine.replace(b'"a"', b'"b"')
    assert _rejection(edited) == "forged"


def test_garbage_is_malformed_or_oversized() -> None:
    assert _rejection(b"") == "malformed"
    assert _rejection(b"hello") == "malformed"
    assert _rejection("text") == "malformed"
    assert _rejection(b"LCI1X{}") == "malformed"
    assert _rejection(b"LCI1" + b"\x00" * (MAX_MESSAGE)) == "oversized"
    for body in (b"{", b"[]", b'{"o":1,"op":"clear","k":[],"t":null}', b'{"o":"x"}'):
        assert _rejection(b"LCI1U" + body, None) == "malformed"
    bad_keys = b'{"o":"x","op":"keys","k":[""],"t":null}'
    assert _rejection(b"LCI1U" + bad_keys, None) == "malformed"
    bad_op = b'{"o":"x","op":"drop","k":[],"t":null}'
    assert _rejection(b"LCI1U" + bad_op, None) == "malformed"


def _as_the_previous_release_reads_it(data: bytes) -> BusMessage:
    """What a stack of the release before ``expire`` makes of a message: it takes the
    operations ``keys``, ``tag`` and ``clear`` (anything else is malformed) and reads
    the fields ``o``, ``op``, ``k`` and ``t`` only."""
    fields = json.loads(data[len(b"LCI1U") :])
    if fields["op"] not in ("keys", "tag", "clear"):
        raise Rejected("malformed")
    return BusMessage(fields["o"], fields["op"], tuple(fields["k"]), fields["t"])


def test_an_expire_reaches_the_previous_release_as_its_drop() -> None:
    # Rather than reject it and keep serving the entries as fresh, a peer that knows no
    # expire drops them: coarser, never stale.
    keys = encode(BusMessage("origin", "expire-keys", ("a", "b")), None)
    assert isinstance(from_message(_as_the_previous_release_reads_it(keys)), DropKeys)
    tag = encode(BusMessage("origin", "expire-tag", tag="t"), None)
    older = from_message(_as_the_previous_release_reads_it(tag))
    assert isinstance(older, DropTag)
    assert older.tag == "t"
    newer = decode(keys, None), decode(tag, None)
    assert newer[0] is not None
    assert newer[1] is not None
    assert isinstance(from_message(newer[0]), ExpireKeys)
    assert isinstance(from_message(newer[1]), ExpireTag)


def test_a_mode_this_release_does_not_know_is_read_as_the_drop() -> None:
    for body, expected in (
        (b'{"o":"x","op":"keys","k":["a"],"t":null,"m":"later"}', BusMessage("x", "keys", ("a",))),
        (b'{"o":"x","op":"tag","k":[],"t":"t","m":7}', BusMessage("x", "tag", tag="t")),
        (b'{"o":"x","op":"clear","k":[],"t":null,"m":"expire"}', BusMessage("x", "clear")),
    ):
        assert decode(b"LCI1U" + body, None) == expected
    no_tag = b'{"o":"x","op":"tag","k":[],"t":null,"m":"expire"}'
    assert _rejection(b"LCI1U" + no_tag, None) == "malformed"
    named = b'{"o":"x","op":"expire-keys","k":["a"],"t":null}'  # the name is not the wire's
    assert _rejection(b"LCI1U" + named, None) == "malformed"


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    assert _rejection(b"LCI1U" + b"[" * 5000, None) == "malformed"


@pytest.mark.parametrize(
    "keys",
    [
        [f"ключ:{n}:" + "é" * 500 for n in range(300)],
        [f"{n}:" + "\x01" * 1000 for n in range(60)],  # ASCII, each character 6 bytes
        [f"{n}" for n in range(20_000)],
    ],
    ids=["non-ASCII", "control characters", "many short"],
)
@pytest.mark.parametrize("op", ["keys", "expire-keys"])
def test_long_key_lists_are_split_within_the_bound(keys: list[str], op: str) -> None:
    messages = split_keys("origin", keys, op)
    assert len(messages) > 1
    assert {message.op for message in messages} == {op}
    assert [key for message in messages for key in message.keys] == keys
    assert all(len(encode(message, SECRET)) <= MAX_MESSAGE for message in messages)


@pytest.mark.parametrize("count", [1, 2, 10])
def test_a_few_keys_of_any_length_go_in_one_message(count: int) -> None:
    keys = [f"{n}:" + "\x01" * (MAX_KEY_LENGTH - 4) for n in range(count)]
    (message,) = split_keys("origin", keys)
    assert message.keys == tuple(keys)
    assert len(encode(message, SECRET)) <= MAX_MESSAGE


# -- a bus with no server to talk to ------------------------------------------------------


@pytest.mark.anyio
async def test_invalidations_given_up_are_counted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there
    bus = RedisInvalidationBus(dead, timeout=0.2)
    stack = CacheStack(
        [MemoryLayer()],
        invalidation_bus=bus,
        graceful_degradation=GracefulDegradation(retry_after=60),
    )
    with anyio.fail_after(10):
        async with stack as cache:
            await cache.set("k", 1)  # the publish fails: the bus is degraded
            await cache.delete("k")  # not even tried
            stats = cache.statistics()
    assert (stats.bus_errors, stats.bus_skipped, stats.bus_dropped) == (1, 1, 2)
    assert stats.bus_state == "degraded"


@pytest.mark.anyio
async def test_bus_needs_its_own_type() -> None:
    with pytest.raises(TypeError, match="RedisInvalidationBus"):
        CacheStack([MemoryLayer()], invalidation_bus=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="secret"):
        RedisInvalidationBus("redis://localhost", secret=b"")
    with pytest.raises(ValueError, match="Redis URL"):
        RedisInvalidationBus("http://localhost")


def test_only_a_layer_on_the_bus_server_carries_its_messages() -> None:
    bus = RedisInvalidationBus("redis://127.0.0.1:6390/2")
    same = RedisLayer(url="redis://user:pw@127.0.0.1:6390/0")
    other_port = RedisLayer(url="redis://127.0.0.1:6391/2")
    other_host = RedisLayer(url="redis://localhost:6390/2")  # maybe the same: not assumed
    assert carrier_of([MemoryLayer(), same], bus) is same
    assert carrier_of([MemoryLayer(), other_port], bus) is None
    assert carrier_of([MemoryLayer(), other_host], bus) is None
    assert carrier_of([same, MemoryLayer()], bus) is same  # the last remote layer
    assert carrier_of([same, other_port], bus) is None  # written last: must be on the bus
    assert carrier_of([MemoryLayer()], bus) is None
    assert carrier_of([MemoryLayer(), same], None) is None
    client = object()
    assert carrier_of([RedisLayer(client=client)], RedisInvalidationBus(client=client))
    assert carrier_of([RedisLayer(client=client)], RedisInvalidationBus(client=object())) is None


@pytest.mark.parametrize(("bad", "error"), BAD_DURATIONS)
@pytest.mark.parametrize("argument", ["timeout", "keepalive"])
def test_bus_durations_are_checked(argument: str, bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=argument):
        RedisInvalidationBus("redis://localhost", **{argument: bad})
