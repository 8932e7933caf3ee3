"""The Redis layer's envelope (format version 2, and version 1 as the previous release
wrote it) and how a record's three deadlines go through it and back, without a server:
Redis keeps the TTL, the envelope the windows in whole milliseconds, and a record never
reads back fresher than it was written. Copies between layers keep the deadlines in
order. (The same against a real server: tests/integration/test_redis_layer.py.)
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layercache import JsonSerializer, MemoryLayer, MsgpackSerializer, Record
from layercache._redis_layer import _read_record, _windows
from layercache._serializers import (
    HEADER_SIZE,
    MAGIC,
    MAX_WINDOW_MS,
    VERSION,
    CorruptValue,
    unwrap,
    wrap,
)
from layercache.testing import FakeClock

from ..helpers import envelope_v1, envelope_v2

JSON = JsonSerializer()
DUST = 1e-6
"""Float error allowed around a deadline (the layer ignores what is below a µs)."""


# -- the envelope ------------------------------------------------------------------------


def test_version_2_carries_tags_and_windows() -> None:
    assert VERSION == 2
    data = wrap(JSON, b'{"a":1}', frozenset({"b", "ü"}), 1500, 250)
    assert data[:4] == MAGIC + b"\x02"
    assert struct.unpack_from(">QQ", data, 7) == (1500, 250)
    assert unwrap(JSON, data) == ({"a": 1}, frozenset({"b", "ü"}), 1500, 250)
    assert unwrap(JSON, wrap(JSON, b"1", frozenset())) == (1, frozenset(), 0, 0)
    assert len(wrap(JSON, b"", frozenset())) == HEADER_SIZE


def test_the_previous_releases_values_still_read_without_windows() -> None:
    assert unwrap(JSON, envelope_v1(b'"old"', "t", "ü")) == ("old", frozenset({"t", "ü"}), 0, 0)
    assert unwrap(JSON, envelope_v1(b"[1]")) == ([1], frozenset(), 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1LC",
        b"not an envelope",
        envelope_v2(1, 0)[: HEADER_SIZE - 1],  # the windows cut short
        MAGIC + b"\x02\x01\x00\x00[]",  # a version 1 body behind a version 2 header
        envelope_v2(0, 0).replace(b"\x02", b"\x03", 1),  # a version to come
        envelope_v2(0, 0).replace(b"\x02", b"\x00", 1),
        envelope_v2(MAX_WINDOW_MS + 1, 0),
        envelope_v2(0, MAX_WINDOW_MS + 1),
        envelope_v2(2**64 - 1, 2**64 - 1),
        envelope_v2(0, 0, b"", tags=1),  # a tag that is not there
        envelope_v2(0, 0, b"\x00\x05ab", tags=1),  # a tag cut short
        envelope_v1(b"{broken"),
        envelope_v1(b"[]", serializer_id=MsgpackSerializer.id),
    ],
)
def test_anything_else_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptValue):
        unwrap(JSON, data)


def test_the_longest_windows_are_ours() -> None:
    assert unwrap(JSON, envelope_v2(MAX_WINDOW_MS, MAX_WINDOW_MS))[2:] == (
        MAX_WINDOW_MS,
        MAX_WINDOW_MS,
    )
    assert MAX_WINDOW_MS < 2**53  # exact in Lua's doubles, where the expire script reads it


# -- deadlines through Redis -------------------------------------------------------------


def _through_redis(record: Record, now: float, later: float = 0.0) -> Record:
    """``record`` written at ``now`` and read back ``later`` seconds afterwards (Redis's
    PTTL having gone down by as much, in whole ms)."""
    ttl_ms, stale_ms, early_ms = _windows(record, now)
    left = ttl_ms - int(later * 1000) if ttl_ms else -1
    return _read_record((record.value, record.tags, stale_ms, early_ms), now + later, left)


@given(
    now=st.floats(0, 1e7),
    ttl=st.floats(0.001, 1e6),
    stale=st.floats(0, 1e6),
    ahead=st.none() | st.floats(0.01, 0.99),
)
def test_a_record_never_reads_back_fresher_than_written(
    now: float, ttl: float, stale: float, ahead: float | None
) -> None:
    written = Record.new(b"v", now, ttl, stale=stale, refresh_ahead=ahead)
    read = _through_redis(written, now)
    pairs = [
        (read.refresh_at, written.refresh_at),
        (read.fresh_until, written.fresh_until),
        (read.stale_until, written.stale_until),
    ]
    for got, wanted in pairs:
        assert got is not None
        assert wanted is not None
        assert abs(got - wanted) <= 0.001 + DUST
        assert got <= wanted + DUST  # no fresher, no longer-lived
    assert read.refresh_at <= read.fresh_until <= read.stale_until  # type: ignore[operator]


def test_windows_in_whole_milliseconds() -> None:
    written = Record.new(b"v", 100.0, 60.0, stale=30.0, refresh_ahead=0.75)
    assert _windows(written, 100.0) == (90_000, 30_000, 15_000)
    read = _through_redis(written, 100.0)
    assert (read.refresh_at, read.fresh_until, read.stale_until) == (145.0, 160.0, 190.0)
    # 10 s later Redis has 10 s less: the same deadlines on the same clock.
    later = _through_redis(written, 100.0, later=10.0)
    assert (later.refresh_at, later.fresh_until, later.stale_until) == (145.0, 160.0, 190.0)
    # Past the fresh TTL, the deadlines already passed are placed in the past.
    stale = _through_redis(written, 100.0, later=75.0)
    assert (stale.refresh_at, stale.fresh_until, stale.stale_until) == (145.0, 160.0, 190.0)
    assert not stale.is_fresh(175.0)


def test_rounding_is_towards_staleness() -> None:
    # 59.9996 s fresh, 0.0008 s stale: each deadline rounds down to its millisecond.
    written = Record(b"v", 59.9996, 60.0004, refresh_at=59.9996)
    assert _windows(written, 0.0) == (60_000, 1, 0)
    read = _through_redis(written, 0.0)
    assert read.fresh_until == read.refresh_at == 59.999
    assert read.stale_until == 60.0
    plain = Record.new(b"v", 0.0, 1.5625)
    assert _windows(plain, 0.0) == (1562, 0, 0)
    assert _windows(Record.new(b"v", 0.0, 0.0001), 0.0) == (1, 0, 0)  # Redis's least
    assert _windows(Record.new(b"v", 0.1, 5.0), 0.1) == (5000, 0, 0)  # not 4999: dust


def test_without_windows_the_three_deadlines_are_one() -> None:
    written = Record.new(b"v", 5.0, 2.5)
    assert _windows(written, 5.0) == (2500, 0, 0)
    read = _through_redis(written, 5.0)
    assert read.fresh_until == read.stale_until == read.refresh_at == 7.5


def test_without_a_ttl_there_are_no_deadlines() -> None:
    forever = Record.new(b"v", 5.0, None)
    assert _windows(forever, 5.0) == (0, 0, 0)
    read = _through_redis(forever, 5.0)
    assert (read.fresh_until, read.stale_until, read.refresh_at) == (None, None, None)


@pytest.mark.parametrize(("stale_ms", "early_ms"), [(1, 0), (0, 1), (MAX_WINDOW_MS, 0)])
def test_windows_on_a_key_without_a_ttl_are_corrupt(stale_ms: int, early_ms: int) -> None:
    # Nothing to place them from: taken as written, the entry would be fresh forever.
    with pytest.raises(CorruptValue, match="without a TTL"):
        _read_record(("v", frozenset(), stale_ms, early_ms), 0.0, -1)


def test_deadlines_already_past_when_written_read_back_as_now() -> None:
    # An entry that was stale (or due) when written reads back stale (or due) at once.
    stale = Record(b"v", 10.0, 100.0, refresh_at=5.0)
    assert _windows(stale, 20.0) == (80_000, 80_000, 0)
    read = _through_redis(stale, 20.0)
    assert (read.refresh_at, read.fresh_until, read.stale_until) == (20.0, 20.0, 100.0)
    due = Record(b"v", 30.0, 40.0, refresh_at=5.0)
    assert _windows(due, 20.0) == (20_000, 10_000, 10_000)


def test_a_record_stale_forever_is_stored_until_its_freshness_ends() -> None:
    # Redis keeps no deadline but the TTL: rather fresh forever, it lives less.
    odd = Record(b"v", 30.0, None, refresh_at=30.0)
    assert _windows(odd, 20.0) == (10_000, 0, 0)


# -- copies between layers ---------------------------------------------------------------


@given(
    ttl=st.floats(0.001, 1e6),
    stale=st.floats(0, 1e6),
    ahead=st.none() | st.floats(0.01, 0.99),
    own_ttl=st.none() | st.floats(0.001, 1e6),
)
def test_a_backfilled_copy_keeps_the_deadlines_in_order_and_within_the_original(
    ttl: float, stale: float, ahead: float | None, own_ttl: float | None
) -> None:
    layer = MemoryLayer(ttl=own_ttl)
    layer.attach(FakeClock())
    now = layer.clock()
    found = Record.new("v", now, ttl, frozenset({"t"}), stale=stale, refresh_ahead=ahead)
    copy = layer.backfill(found, now)
    assert copy.tags == found.tags
    assert copy.refresh_at is not None
    assert copy.fresh_until is not None
    assert copy.stale_until is not None
    assert copy.refresh_at <= copy.fresh_until <= copy.stale_until
    assert copy.refresh_at <= found.refresh_at  # type: ignore[operator]
    assert copy.fresh_until <= found.fresh_until  # type: ignore[operator]
    assert copy.stale_until <= found.stale_until  # type: ignore[operator]
    if own_ttl is None:
        assert copy == found
    else:  # fresh no longer than the layer's TTL, then stale for the same window
        assert copy.fresh_until <= now + own_ttl
        window = found.stale_until - found.fresh_until  # type: ignore[operator]
        assert copy.stale_until - copy.fresh_until == pytest.approx(window)


def test_a_copy_of_an_entry_without_a_ttl_gets_the_layers_own() -> None:
    layer = MemoryLayer(ttl=10)
    layer.attach(FakeClock())
    now = layer.clock()
    copy = layer.backfill(Record.new("v", now, None), now)
    assert copy.refresh_at == copy.fresh_until == copy.stale_until == now + 10


# -- marking a record stale --------------------------------------------------------------


def test_expired_keeps_the_stale_window_from_now() -> None:
    record = Record.new("v", 0.0, 60.0, stale=30.0, refresh_ahead=0.5)
    expired = record.expired(10.0)
    assert expired is not None
    assert (expired.refresh_at, expired.fresh_until, expired.stale_until) == (10.0, 10.0, 40.0)
    again = expired.expired(20.0)  # already stale: unchanged
    assert again is not None
    assert (again.fresh_until, again.stale_until) == (10.0, 40.0)
    late = record.expired(80.0)  # stale already, 10 s left
    assert late is not None
    assert (late.fresh_until, late.stale_until) == (60.0, 90.0)


def test_expired_is_none_without_a_stale_window() -> None:
    assert Record.new("v", 0.0, 60.0).expired(10.0) is None
    assert Record.new("v", 0.0, None).expired(10.0) is None
    assert Record.new("v", 0.0, 60.0, stale=30.0).expired(90.0) is None  # gone
