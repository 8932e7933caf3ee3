"""How values become bytes for Redis, and the envelope that carries them.

JSON is the default (``orjson`` when it is installed, the standard library otherwise).
``msgpack`` is opt-in. Pickle is opt-in and only with an HMAC key: unpickling runs
code, so a payload is unpickled only after its signature checks out — **anyone who
can write to your Redis and knows the key can run code in your process**.

Every stored value is wrapped in an envelope: a magic prefix, a format version, the
serializer's id and the entry's tags, then the serialized body. Bytes without a valid
envelope (foreign or corrupt data) decode to an error the Redis layer treats as a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ._exceptions import SerializationError

try:
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]


class CorruptValue(Exception):
    """Bytes in Redis that are not a value this layer wrote."""


class Serializer(ABC):
    """Turns values into bytes and back. ``id`` is stored with each value.

    Subclass it for a format of your own: give it an ``id`` no other serializer in
    your deployment uses and implement :meth:`dumps` and :meth:`loads`. A value read
    back with another serializer's ``id`` is treated as corrupt (a miss), so changing
    the serializer of a running deployment costs misses, never wrong values.
    """

    id: ClassVar[int]
    """A small int (0-255) stored in every value's envelope; 1-3 are layercache's."""
    name: ClassVar[str]
    """A short name for reprs and messages."""

    @abstractmethod
    def dumps(self, value: object) -> bytes:
        """:raises SerializationError: the value cannot be represented."""

    @abstractmethod
    def loads(self, data: bytes) -> object:
        """:raises Exception: any, for data that does not decode (treated as corrupt)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class JsonSerializer(Serializer):
    """JSON: str, int, float, bool, None, lists and dicts with str keys.

    Tuples come back as lists. Other types raise :class:`SerializationError`.
    """

    id = 1
    name = "json"

    def dumps(self, value: object) -> bytes:
        try:
            if orjson is not None:
                return orjson.dumps(
                    value,
                    option=orjson.OPT_PASSTHROUGH_DATACLASS
                    | orjson.OPT_PASSTHROUGH_DATETIME
                    | orjson.OPT_PASSTHROUGH_SUBCLASS,
                )
            return json.dumps(
                value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except (TypeError, ValueError) as error:
            raise SerializationError(
                f"cannot store a {type(value).__name__} as JSON: {error}"
            ) from error

    def loads(self, data: bytes) -> object:
        if orjson is not None:
            return orjson.loads(data)
        return json.loads(data)


class MsgpackSerializer(Serializer):
    """msgpack (``pip install msgpack``): like JSON plus bytes, more compact."""

    id = 2
    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack  # type: ignore[import-untyped]
        except ImportError as error:
            raise ImportError("MsgpackSerializer needs `pip install msgpack`") from error
        self._msgpack = msgpack

    def dumps(self, value: object) -> bytes:
        try:
            data: bytes = self._msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as error:
            raise SerializationError(
                f"cannot store a {type(value).__name__} as msgpack: {error}"
            ) from error
        return data

    def loads(self, data: bytes) -> object:
        return self._msgpack.unpackb(data, raw=False, strict_map_key=True)


class PickleSerializer(Serializer):
    """Pickle, signed with HMAC-SHA256: any picklable value.

    **Dangerous**: unpickling runs code. A payload is unpickled only after its signature
    checks out, so anyone who can write to your Redis *and* knows the key can run code
    in every process that reads it. Keep the key secret and prefer JSON or msgpack.

    :param key: the HMAC key (at least 16 bytes), the same on every instance.
    :raises ValueError: a key that is not bytes or is shorter than 16 bytes.
    """

    id = 3
    name = "pickle"

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("PickleSerializer needs an HMAC key of at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "PickleSerializer(key=***)"

    def dumps(self, value: object) -> bytes:
        try:
            body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            raise SerializationError(f"cannot pickle a {type(value).__name__}: {error}") from error
        return hmac.digest(self._key, body, hashlib.sha256) + body

    def loads(self, data: bytes) -> object:
        signature, body = data[:32], data[32:]
        if not hmac.compare_digest(signature, hmac.digest(self._key, body, hashlib.sha256)):
            raise CorruptValue("bad signature: not unpickled")
        return pickle.loads(body)


def resolve_serializer(serializer: object) -> Serializer:
    """``None``/``"json"``, ``"msgpack"`` or a :class:`Serializer` instance."""
    if serializer is None or serializer == "json":
        return JsonSerializer()
    if serializer == "msgpack":
        return MsgpackSerializer()
    if serializer == "pickle":
        raise ValueError("pickle needs an HMAC key: serializer=PickleSerializer(key=...)")
    if isinstance(serializer, Serializer):
        return serializer
    raise TypeError(f"unknown serializer {serializer!r}: use 'json', 'msgpack' or a Serializer")


# -- the envelope ------------------------------------------------------------------------

MAGIC = b"\xc1LC"  # 0xc1 starts no JSON text and no msgpack object
VERSION = 1
_HEADER = struct.Struct(">3sBBH")  # magic, version, serializer id, tag count
_LENGTH = struct.Struct(">H")


def wrap(serializer: Serializer, body: bytes, tags: frozenset[str]) -> bytes:
    parts = [_HEADER.pack(MAGIC, VERSION, serializer.id, len(tags))]
    for tag in sorted(tags):
        encoded = tag.encode()
        parts.append(_LENGTH.pack(len(encoded)))
        parts.append(encoded)
    parts.append(body)
    return b"".join(parts)


def unwrap(serializer: Serializer, data: bytes) -> tuple[Any, frozenset[str]]:
    """Decode an envelope written by :func:`wrap` with the same serializer.

    :raises CorruptValue: for anything else; nothing in the data is ever executed
        unless the serializer itself vouches for it (pickle checks its signature).
    """
    try:
        magic, version, serializer_id, tag_count = _HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise CorruptValue("not a layercache value")
        if serializer_id != serializer.id:
            raise CorruptValue(f"written with serializer id {serializer_id}, not {serializer.id}")
        offset = _HEADER.size
        tags = []
        for _ in range(tag_count):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            if offset + length > len(data):
                raise CorruptValue("truncated tags")
            tags.append(data[offset : offset + length].decode())
            offset += length
        return serializer.loads(data[offset:]), frozenset(tags)
    except CorruptValue:
        raise
    except Exception as error:
        raise CorruptValue(f"undecodable value: {type(error).__name__}: {error}") from error
