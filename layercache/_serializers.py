"""How values become bytes for Redis, and the envelope that carries them.

JSON is the default (``orjson`` when it is installed, the standard library otherwise,
accepting and giving back the same values either way: :func:`check_json`).
``msgpack`` is opt-in. Pickle is opt-in and only with an HMAC key: unpickling runs
code, so a payload is unpickled only after its signature checks out — **anyone who
can write to your Redis and knows the key can run code in your process**.

Every stored value is wrapped in an envelope: a magic prefix, a format version, the
serializer's id, the tag count, the entry's freshness windows (see :func:`wrap`) and its
tags, then the serialized body. Bytes without a valid
envelope (foreign or corrupt data) decode to an error the Redis layer treats as a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
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


JSON_INT_RANGE = (-(2**63), 2**64 - 1)
"""The ints the JSON serializer takes: what orjson carries (it refuses ints beyond 64
bits, where the standard library would write them and another reader may round them)."""
JSON_MAX_DEPTH = 200
"""Most containers nested in one JSON value (orjson refuses more than 254; a circular
value is refused as too deep)."""


def check_json(value: object) -> None:
    """Refuse, before anything is written, what JSON would not give back as it is
    (the rules are :class:`JsonSerializer`'s; the bounds :data:`JSON_INT_RANGE` and
    :data:`JSON_MAX_DEPTH`). The same check for orjson and the standard library, so
    both accept the same values.

    :raises SerializationError: saying what was refused and where in the value.
    """
    try:
        _check_json(value, 0)
    except _Refused as refused:
        where = "".join(reversed(refused.path))
        raise SerializationError(
            f"cannot store {'the value' if not where else 'value' + where} as JSON: "
            f"{refused.reason}"
        ) from None


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []


_LOW, _HIGH = JSON_INT_RANGE


def _check_json(value: object, depth: int) -> None:
    if type(value) is dict:
        if depth >= JSON_MAX_DEPTH:
            raise _Refused(f"nested over {JSON_MAX_DEPTH} deep (or circular)")
        for key, item in value.items():
            if type(key) is not str:
                refused = _Refused(
                    f"the dict key {key!r:.40} is a {type(key).__name__}, not a str (it "
                    "would come back as a str, or collide with one)"
                )
            elif _plain(item):
                continue
            else:
                try:
                    _check_json(item, depth + 1)
                    continue
                except _Refused as error:
                    refused = error
            refused.path.append(f"[{key!r:.40}]")
            raise refused
    elif type(value) is list or type(value) is tuple:
        if depth >= JSON_MAX_DEPTH:
            raise _Refused(f"nested over {JSON_MAX_DEPTH} deep (or circular)")
        for index, item in enumerate(value):
            if not _plain(item):
                try:
                    _check_json(item, depth + 1)
                except _Refused as refused:
                    refused.path.append(f"[{index}]")
                    raise
    elif not _plain(value):
        kind = type(value)
        if kind is int:
            raise _Refused("an int beyond 64 bits (JSON readers disagree on those)")
        if kind is float:
            raise _Refused(f"{value!r} is not JSON")
        raise _Refused(f"a {kind.__module__}.{kind.__qualname__} is not a JSON type")


def _plain(value: object) -> bool:
    """A scalar JSON carries exactly: str, bool, None, a 64-bit int, a finite float."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if type(value) is int:
        return _LOW <= value <= _HIGH
    if type(value) is float:
        return math.isfinite(value)
    return False


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_STDLIB_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_STDLIB_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
)


class JsonSerializer(Serializer):
    """JSON: str, int, float, bool, None, lists (and tuples) and dicts with str keys.

    It accepts, and gives back equal and of the same types, exactly the same values
    with orjson (used when installed) and with the standard library: by exact type,
    ``str``, ``int`` from -2**63 to 2**64 - 1 (orjson's range), finite ``float``,
    ``bool``, ``None``, ``list``, ``tuple`` (given back as a list) and ``dict`` with
    ``str`` keys, nested at most 200 deep. Whatever JSON would change silently raises
    :class:`SerializationError` before anything is written: non-str dict keys (they
    would come back as str, or collide), bigger ints, NaN and infinities, subclasses
    (``IntEnum``, ``OrderedDict``, named tuples), and types one library knows and the
    other does not (``UUID``, ``datetime``, dataclasses, ``Enum``, numpy values).
    """

    id = 1
    name = "json"

    def __init__(self) -> None:
        self._orjson = orjson is not None

    def dumps(self, value: object) -> bytes:
        check_json(value)
        return self.dumps_checked(value)

    def dumps_checked(self, value: object) -> bytes:
        """:meth:`dumps` for a value already known to pass :func:`check_json` (the
        bus's own messages: str, lists of str, None), without walking it again."""
        try:
            if self._orjson:
                return orjson.dumps(value)
            return _STDLIB_ENCODER.encode(value).encode()
        except (TypeError, ValueError) as error:  # lone surrogates, in either library
            raise SerializationError(
                f"cannot store a {type(value).__name__} as JSON: {error}"
            ) from error

    def loads(self, data: bytes) -> object:
        if self._orjson:
            return orjson.loads(data)
        return _STDLIB_DECODER.decode(data.decode())


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
VERSION = 2
"""The envelope version :func:`wrap` writes; :func:`unwrap` reads it and version 1 (the
previous release's, which has no windows: fresh for its whole TTL)."""
_HEADER = struct.Struct(">3sBBH")  # magic, version, serializer id, tag count
_WINDOWS = struct.Struct(">QQ")  # version 2 only: stale_ms, early_ms
WINDOWS_OFFSET = _HEADER.size
"""Where version 2's windows start (the Redis layer's expire script rewrites them)."""
HEADER_SIZE = _HEADER.size + _WINDOWS.size
"""Bytes before the tags in a version 2 envelope."""
MAX_WINDOW_MS = 10**15
"""The longest window an envelope may carry, in milliseconds: a window is one duration
(a stale window, or the refresh-ahead part of a fresh TTL) and no duration is longer
than ``MAX_TTL`` (10**12 s). A longer one is forged or corrupt. (Lua, which rewrites the
windows, counts exactly up to 2**53, far above it.)"""
_LENGTH = struct.Struct(">H")

Unwrapped = tuple[Any, frozenset[str], int, int]
"""What :func:`unwrap` finds: ``(value, tags, stale_ms, early_ms)``."""


def wrap(
    serializer: Serializer,
    body: bytes,
    tags: frozenset[str],
    stale_ms: int = 0,
    early_ms: int = 0,
) -> bytes:
    """The envelope of ``body``: its tags and its windows, ``stale_ms`` (from the end of
    its freshness to the end of its TTL) and ``early_ms`` (from its refresh-ahead point to
    the end of its freshness), both 0 without those windows or without a TTL. The TTL
    itself is Redis's (no wall clock is stored): a reader places the windows from it."""
    parts = [
        _HEADER.pack(MAGIC, VERSION, serializer.id, len(tags)),
        _WINDOWS.pack(stale_ms, early_ms),
    ]
    for tag in sorted(tags):
        encoded = tag.encode()
        parts.append(_LENGTH.pack(len(encoded)))
        parts.append(encoded)
    parts.append(body)
    return b"".join(parts)


def unwrap(serializer: Serializer, data: bytes) -> Unwrapped:
    """Decode an envelope written by :func:`wrap` with the same serializer, or by the
    previous release (version 1: no windows): ``(value, tags, stale_ms, early_ms)``.

    :raises CorruptValue: for anything else, a window over :data:`MAX_WINDOW_MS`
        included; nothing in the data is ever executed unless the serializer itself
        vouches for it (pickle checks its signature).
    """
    try:
        magic, version, serializer_id, tag_count = _HEADER.unpack_from(data)
        if magic != MAGIC or version not in (1, 2):
            raise CorruptValue("not a layercache value")
        if serializer_id != serializer.id:
            raise CorruptValue(f"written with serializer id {serializer_id}, not {serializer.id}")
        offset = _HEADER.size
        stale_ms = early_ms = 0
        if version == 2:
            stale_ms, early_ms = _WINDOWS.unpack_from(data, offset)
            if stale_ms > MAX_WINDOW_MS or early_ms > MAX_WINDOW_MS:
                raise CorruptValue(f"windows of {stale_ms} and {early_ms} ms")
            offset = HEADER_SIZE
        tags = []
        for _ in range(tag_count):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            if offset + length > len(data):
                raise CorruptValue("truncated tags")
            tags.append(data[offset : offset + length].decode())
            offset += length
        return serializer.loads(data[offset:]), frozenset(tags), stale_ms, early_ms
    except CorruptValue:
        raise
    except Exception as error:
        raise CorruptValue(f"undecodable value: {type(error).__name__}: {error}") from error
