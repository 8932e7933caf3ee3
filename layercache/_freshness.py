"""Freshness: how long an entry is served, and what a load does when it is not fresh.

:class:`Freshness` is the setting (a stack default, replaced per call); :func:`judge`
says what a record found is worth to a call; :class:`Backoff` remembers, per key, that
a fetch failed lately. The load path (:mod:`._load`) acts on them. Everything here is
synchronous and I/O-free, so it is unit-tested without a loop.

An entry's life (see :mod:`._record`): fresh, maybe due for a refresh ahead, then stale
for ``max(stale_while_revalidate, stale_if_error)``, then gone. What a stale entry is
worth depends on the call: within its ``stale_while_revalidate`` it is served at once
(and refreshed in the background); beyond that but within its ``stale_if_error`` it is
the fallback of a normal load; beyond both it is as good as missing.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass

from ._record import Record
from ._validation import MAX_TTL, check_duration

MAX_REFRESHES = 100
"""Background refreshes one stack runs at once; over it, a refresh is skipped (the
stale or early value is served, and ``refreshes_skipped`` counts it)."""
REFRESH_TIME_LIMIT = 60.0
"""Seconds a background refresh (or a fetch left running by ``soft_timeout``) may take
when the call set no ``hard_timeout``: then it is cancelled and counted as an error."""
MAX_BACKOFF_KEYS = 10_000
"""Keys whose failed fetch one stack remembers for ``error_backoff``; the oldest go
first past it."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """How entries age and what a load does about it (DESIGN §2, "Freshness").

    Durations in seconds. An entry written with fresh TTL ``t`` is fresh for ``t``
    (shortened by ``jitter``), then stale for ``max(stale_while_revalidate,
    stale_if_error)``, then gone.

    :param stale_while_revalidate: a stale entry this far past its freshness is
        returned at once, and one background refresh starts.
    :param stale_if_error: a stale entry this far past its freshness is what callers get
        when the fetch fails or passes ``hard_timeout``.
    :param refresh_ahead: a fraction in (0, 1): a hit after this share of an entry's
        fresh life starts one background refresh (fixed when the entry is written).
    :param soft_timeout: with a stale entry to fall back on, callers get it after this
        long; the fetch goes on in the background and stores its result.
    :param hard_timeout: the fetch is cancelled after this long: callers get the stale
        entry within ``stale_if_error``, else :class:`~layercache.FetchTimeoutError`.
    :param error_backoff: after a failed fetch or refresh, the key is not fetched again
        for this long while a stale entry can be served (0: no backoff).
    :param negative_ttl: a fetched ``None`` is stored with this fresh TTL instead.
    :param jitter: a fraction in [0, 1): each fresh TTL stored is shortened by a random
        fraction up to this, never lengthened.
    :raises TypeError, ValueError: a setting of the wrong type or out of range.
    """

    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    refresh_ahead: float | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    error_backoff: float = 10.0
    negative_ttl: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("stale_while_revalidate", "stale_if_error", "error_backoff"):
            _check_window(getattr(self, name), name)
        for name in ("soft_timeout", "hard_timeout", "negative_ttl"):
            value = getattr(self, name)
            if value is not None:
                check_duration(value, name)
        if self.refresh_ahead is not None:
            _check_fraction(self.refresh_ahead, "refresh_ahead", low_open=True)
        _check_fraction(self.jitter, "jitter", low_open=False)
        soft, hard = self.soft_timeout, self.hard_timeout
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(f"soft_timeout ({soft}) must be shorter than hard_timeout ({hard})")

    @property
    def stale_window(self) -> float:
        """How long an entry is kept stale: ``max(stale_while_revalidate,
        stale_if_error)``."""
        return max(self.stale_while_revalidate, self.stale_if_error)

    def fresh_ttl(
        self, ttl: float | None, value: object, draw: float, fetched: bool = True
    ) -> float | None:
        """The fresh TTL to store ``value`` with: ``negative_ttl`` for a fetched None,
        shortened by ``jitter * draw`` (a draw in [0, 1))."""
        if value is None and fetched and self.negative_ttl is not None:
            ttl = self.negative_ttl
        if ttl is None or not self.jitter:
            return ttl
        return ttl * (1.0 - self.jitter * draw)


def _check_window(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= MAX_TTL):
        raise ValueError(f"{name} must be 0 or a positive number of seconds, got {value!r}")


def _check_fraction(value: object, name: str, *, low_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    low_ok = value > 0 if low_open else value >= 0
    if not (low_ok and value < 1):
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


NO_FRESHNESS = Freshness()
"""The default: no stale windows, no refresh ahead; entries live their TTL."""


class Worth(enum.Enum):
    """What a record found is worth to a call with a fetcher."""

    FRESH = "fresh"
    """Serve it."""
    EARLY = "early"
    """Fresh but past its refresh-ahead point: serve it, refresh in the background."""
    REVALIDATE = "revalidate"
    """Stale within ``stale_while_revalidate``: serve it, refresh in the background."""
    FALLBACK = "fallback"
    """Stale within ``stale_if_error`` only: load, and fall back on it."""
    NONE = "none"
    """Stale beyond the call's windows: as good as missing."""


def judge(record: Record, now: float, freshness: Freshness) -> Worth:
    fresh_until = record.fresh_until
    if fresh_until is None or fresh_until > now:
        return Worth.EARLY if record.is_due(now) else Worth.FRESH
    age = now - fresh_until
    if age < freshness.stale_while_revalidate:
        return Worth.REVALIDATE
    if age < freshness.stale_if_error:
        return Worth.FALLBACK
    return Worth.NONE


def best(found: list[tuple[Record, str]]) -> tuple[Record, str] | None:
    """Of records found (each with its layer's name), the one that stays fresh longest
    (the first of equals): what a load falls back on when several layers hold one."""
    chosen: tuple[Record, str] | None = None
    for candidate in found:
        if chosen is None or _later(candidate[0].fresh_until, chosen[0].fresh_until):
            chosen = candidate
    return chosen


def _later(a: float | None, b: float | None) -> bool:
    return b is not None and (a is None or a > b)


class Backoff:
    """Keys whose fetch failed lately, until when; bounded, oldest first out."""

    def __init__(self, limit: int = MAX_BACKOFF_KEYS) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._until)

    def active(self, key: str, now: float) -> bool:
        """Whether ``key`` failed less than its backoff ago (a lapsed entry goes)."""
        until = self._until.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._until[key]
        return False

    def failed(self, key: str, now: float, backoff: float) -> bool:
        """Note a failure; True if the key was not backing off already (log it then)."""
        new = not self.active(key, now)
        if not backoff:
            return new
        self._until[key] = now + backoff
        self._until.move_to_end(key)
        self._prune(now)
        return new

    def succeeded(self, key: str) -> None:
        self._until.pop(key, None)

    def _prune(self, now: float) -> None:
        until = self._until
        while until and (len(until) > self._limit or next(iter(until.values())) <= now):
            until.popitem(last=False)
