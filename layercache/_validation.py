"""Argument checks shared by the stack, the layers and the other actors.

Keys, TTLs and tags are checked once, where they enter the stack; layers trust them.
Every duration (a TTL, a timeout, a lease, an interval) goes through
:func:`check_duration`. Type errors raise :class:`TypeError`, bad values
:class:`ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypeGuard

MAX_KEY_LENGTH = 1024
"""Longest key (and tag) accepted, in characters."""
MAX_TTL = 1e12
"""Longest TTL (or other duration) accepted, in seconds: some 31,700 years, well within
what Redis can expire. (Far beyond it, about 10**14 s through the scripts, Redis refuses
the write, which a layer would report as a failure of Redis, not of the argument.)"""


def check_key(key: object) -> str:
    return _check_text(key, "cache keys")


_COLLECTIONS: tuple[type, ...] = (tuple, list, set, frozenset, type({}.keys()))
"""Iterables recognised without an ABC look-up (the common arguments)."""


def _is_collection(items: object) -> TypeGuard[Iterable[object]]:
    """An iterable of items, not one str or bytes (which iterate too)."""
    return type(items) in _COLLECTIONS or (
        not isinstance(items, str | bytes) and isinstance(items, Iterable)
    )


def check_keys(keys: object) -> list[str]:
    if not _is_collection(keys):
        raise TypeError(
            f"keys must be an iterable of str (not a single str), got {type(keys).__name__}"
        )
    return [check_key(key) for key in keys]


def check_duration(value: object, name: str) -> float:
    """Return ``value``, a number of seconds (a TTL, a timeout, a lease…), as a float.

    The one check of every duration: positive, finite and at most :data:`MAX_TTL`.

    :raises TypeError: not an int or a float (a bool is not a number of seconds).
    :raises ValueError: zero, negative, infinite, NaN or longer than :data:`MAX_TTL`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TTL):
        raise ValueError(
            f"{name} must be a positive finite number of seconds (at most {MAX_TTL:.0e}), "
            f"got {value!r}"
        )
    return seconds


def check_ttl(ttl: object) -> float | None:
    """Return ``ttl`` as a float, or None for "the layer's default" (see
    :func:`check_duration`)."""
    return None if ttl is None else check_duration(ttl, "ttl")


def check_layer_ttls(ttl: object, names: list[str]) -> float | Mapping[str, float] | None:
    """:func:`check_ttl`, or a mapping of layer name to TTL (the layers it does not name
    keep their default), checked against the stack's layer ``names``."""
    if not isinstance(ttl, Mapping):
        return check_ttl(ttl)
    checked: dict[str, float] = {}
    for name, seconds in ttl.items():
        if name not in names:
            raise ValueError(
                f"ttl names no layer of this stack: {name!r} (layers: {sorted(names)})"
            )
        checked[name] = check_duration(seconds, f"ttl[{name!r}]")
    return checked


def check_tags(tags: object) -> frozenset[str]:
    if not _is_collection(tags):
        raise TypeError(
            "tags must be an iterable of str (for one tag write tags=[tag]), "
            f"got {type(tags).__name__}"
        )
    return frozenset([check_tag(tag) for tag in tags])


def check_tag(tag: object) -> str:
    return _check_text(tag, "tags")


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__}")
    if not text:
        raise ValueError(f"{what} must not be empty")
    if len(text) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} must be at most {MAX_KEY_LENGTH} characters, got {len(text)}")
    _check_utf8(text, what)
    return text


def _check_utf8(text: str, what: str) -> None:
    # Remote layers store names as UTF-8; a lone surrogate has no UTF-8 form.
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{what} must be encodable as UTF-8: {text!r}") from None


def check_max_size(max_size: object, name: str = "max_size") -> int:
    """Return ``max_size``, a count (of entries, of bytes…) of at least 1.

    :raises TypeError: not an int (a bool is not a count).
    :raises ValueError: below 1.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"{name} must be an int, not {type(max_size).__name__}")
    if max_size < 1:
        raise ValueError(f"{name} must be at least 1, got {max_size}")
    return max_size


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a layer name must be a non-empty str, got {name!r}")
    return name
