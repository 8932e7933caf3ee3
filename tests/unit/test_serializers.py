"""The serializers, without a server: what the default JSON serializer accepts and gives
back, the same with orjson and with the standard library, and the Redis layer's size
limit and round trip (encoding needs no connection).

The suite has orjson installed; the standard library's path is a serializer made while
the module's ``orjson`` is patched away (``helpers.stdlib_json``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import math
import uuid
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercache import JsonSerializer, RedisLayer, SerializationError
from layercache._redis_layer import DEFAULT_MAX_VALUE_SIZE
from layercache._serializers import JSON_INT_RANGE, JSON_MAX_DEPTH

from ..helpers import same, stdlib_json

WITH_ORJSON = JsonSerializer()
WITHOUT_ORJSON = stdlib_json()
BOTH = pytest.mark.parametrize(
    "serializer", [WITH_ORJSON, WITHOUT_ORJSON], ids=["orjson", "stdlib"]
)


def test_the_two_serializers_use_different_libraries() -> None:
    refuse = mock.Mock(side_effect=AssertionError("orjson used"))
    with mock.patch.object(orjson, "dumps", refuse), mock.patch.object(orjson, "loads", refuse):
        assert WITHOUT_ORJSON.loads(WITHOUT_ORJSON.dumps({"a": 1})) == {"a": 1}
        with pytest.raises(AssertionError, match="orjson used"):
            WITH_ORJSON.dumps({"a": 1})


class Colour(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    BIG = 2


class Name(str):
    pass


class Count(int):
    pass


class Mapping(dict[str, int]):
    pass


class Items(list[int]):
    pass


@dataclasses.dataclass
class Point:
    x: int


Pair = collections.namedtuple("Pair", "a b")

REFUSED = {
    "int key": {1: "x"},
    "keys colliding once stringified": {1: "a", "1": "b"},
    "bool key": {True: "x"},
    "None key": {None: "x"},
    "float key": {1.5: "x"},
    "tuple key": {(1, 2): "x"},
    "nested int key": {"a": [{"b": {2: "x"}}]},
    "int over 64 bits": 2**64,
    "int under -2**63": -(2**63) - 1,
    "nested big int": [1, [2, 10**30]],
    "nan": math.nan,
    "inf": math.inf,
    "-inf": [-math.inf],
    "uuid": uuid.UUID(int=7),
    "datetime": datetime.datetime(2026, 1, 2, 3, 4, 5),
    "date": datetime.date(2026, 1, 2),
    "time": datetime.time(3, 4),
    "dataclass": Point(1),
    "enum": Colour.RED,
    "int enum": Size.BIG,
    "str subclass": Name("x"),
    "int subclass": Count(3),
    "dict subclass": Mapping(a=1),
    "ordered dict": collections.OrderedDict(a=1),
    "list subclass": Items([1]),
    "named tuple": Pair(1, 2),
    "set": {1, 2},
    "frozenset": frozenset({1}),
    "bytes": b"x",
    "bytearray": bytearray(b"x"),
    "decimal": decimal.Decimal("1.5"),
    "fraction": fractions.Fraction(1, 3),
    "complex": 1j,
    "object": object(),
    "lone surrogate": "\ud800",
    "lone surrogate key": {"\udfff": 1},
    "too deep": [[[]]],  # replaced below by a value JSON_MAX_DEPTH + 1 deep
}


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


REFUSED["too deep"] = _nested(JSON_MAX_DEPTH + 1)
_circular: list[Any] = []
_circular.append(_circular)
REFUSED["circular"] = _circular


@BOTH
@pytest.mark.parametrize("value", REFUSED.values(), ids=REFUSED.keys())
def test_json_refuses_what_it_would_change(serializer: JsonSerializer, value: object) -> None:
    with pytest.raises(SerializationError):
        serializer.dumps(value)


def test_a_refusal_says_where_and_what() -> None:
    with pytest.raises(SerializationError, match=r"value\['a'\]\[1\]\[2\].*int, not a str"):
        WITH_ORJSON.dumps({"a": [0, {2: "x"}]})
    with pytest.raises(SerializationError, match=r"value\[0\].*uuid\.UUID"):
        WITHOUT_ORJSON.dumps([uuid.UUID(int=1)])


ACCEPTED = {
    "str": ("ünïcode ☃ \x00 \n", "ünïcode ☃ \x00 \n"),
    "ints at the bounds": (list(JSON_INT_RANGE), list(JSON_INT_RANGE)),
    "floats": ([0.1, -0.0, 1e16, 5e-324, 1.7976931348623157e308], None),
    "bool and None": ([True, False, None], None),
    "tuple": ((1, (2, "x")), [1, [2, "x"]]),
    "dict": ({"a": {"b": [1.5, None]}, "": 0}, None),
    "empty": ([{}, [], ()], [{}, [], []]),
    "deepest allowed": (_nested(JSON_MAX_DEPTH), None),
}


@BOTH
@pytest.mark.parametrize(("value", "expected"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_json_gives_back_equal_values_of_the_same_types(
    serializer: JsonSerializer, value: object, expected: object
) -> None:
    back = serializer.loads(serializer.dumps(value))
    assert same(back, value if expected is None else expected)


def _as_read_back(value: object) -> object:
    """What JSON gives back for an accepted value: tuples become lists."""
    if isinstance(value, dict):
        return {key: _as_read_back(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_read_back(item) for item in value]
    return value


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
    st.text(),  # lone surrogates included
    st.uuids(),
    st.datetimes(),
    st.binary(max_size=4),
    st.sampled_from([Colour.RED, Size.BIG, Name("n"), Count(1), decimal.Decimal(1)]),
)
KEYS = st.one_of(
    st.text(max_size=3),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from(["1", "-1", "True", "None", True, None, 1.0]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_json_is_the_same_with_and_without_orjson(value: object) -> None:
    outcomes: list[bytes | None] = []
    for serializer in (WITH_ORJSON, WITHOUT_ORJSON):
        try:
            outcomes.append(serializer.dumps(value))
        except SerializationError:
            outcomes.append(None)
    with_orjson, without = outcomes
    assert (with_orjson is None) == (without is None), (value, outcomes)
    if with_orjson is None or without is None:
        return
    expected = _as_read_back(value)
    # Read back by its own library and by the other one (instances with and without
    # orjson share a Redis): equal values of the same types every way.
    for data in (with_orjson, without):
        for serializer in (WITH_ORJSON, WITHOUT_ORJSON):
            assert same(serializer.loads(data), expected), (value, data)


@BOTH
def test_json_does_not_read_what_it_would_not_write(serializer: JsonSerializer) -> None:
    for foreign in (b"NaN", b"[Infinity]", b'{"a": -Infinity}'):
        with pytest.raises(ValueError, match=r"unexpected character|no digit|is not JSON"):
            serializer.loads(foreign)


# -- the Redis layer's encoding (no connection needed) -----------------------------------


def test_max_value_size_default_and_checks() -> None:
    assert DEFAULT_MAX_VALUE_SIZE == 16 * 1024 * 1024
    assert RedisLayer(url="redis://localhost").max_value_size == DEFAULT_MAX_VALUE_SIZE
    with pytest.raises(TypeError, match="max_value_size"):
        RedisLayer(url="redis://localhost", max_value_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_value_size"):
        RedisLayer(url="redis://localhost", max_value_size=True)
    with pytest.raises(ValueError, match="max_value_size"):
        RedisLayer(url="redis://localhost", max_value_size=0)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_max_value_size_is_checked_at_the_boundary(serializer: str) -> None:
    layer = RedisLayer(url="redis://localhost", serializer=serializer, max_value_size=100)
    fits = next(
        text
        for text in ("x" * length for length in range(100, 0, -1))
        if len(layer.serializer.dumps(text)) == 100
    )
    assert len(layer.encode(fits)) == 100
    with pytest.raises(SerializationError, match=r"101 bytes.*max_value_size.*100 bytes"):
        layer.encode(fits + "x")


def test_the_default_limit_holds_a_value_just_under_it() -> None:
    layer = RedisLayer(url="redis://localhost")
    fits = "x" * (DEFAULT_MAX_VALUE_SIZE - 2)  # the JSON string's two quotes
    assert len(layer.encode(fits)) == DEFAULT_MAX_VALUE_SIZE
    with pytest.raises(SerializationError, match="max_value_size"):
        layer.encode(fits + "x")


def test_redis_layer_decodes_its_own_encoding() -> None:
    layer = RedisLayer(url="redis://localhost")
    assert layer.decode(layer.encode({"a": (1, 2)})) == {"a": [1, 2]}
    msgpack = RedisLayer(url="redis://localhost", serializer="msgpack")
    # msgpack writes int map keys but refuses them when reading (strict_map_key).
    with pytest.raises(SerializationError, match="does not read this value back"):
        msgpack.decode(msgpack.encode({1: "x"}))
