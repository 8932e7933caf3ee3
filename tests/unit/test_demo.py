"""The demo's verdicts and report, checked apart from its runs: each scenario's figures
go through the same pure function the demo uses, fed with the figures of a broken
cache. The demo itself (``python -m layercache demo``) runs in
tests/artifacts/test_demo.py.
"""

from __future__ import annotations

from layercache._demo._expiry import ExpiryFigures, Readers
from layercache._demo._failsafe import FailSafeFigures, Side, phase_at
from layercache._demo._outage import Burst, OutageFigures, through_proxy
from layercache._demo._report import Result, Traffic, duration, summary_table
from layercache._demo._stale import StaleFigures
from layercache._demo._stampede import Crowd, StampedeFigures
from layercache._demo._tags import TagFigures

# -- the verdicts, from the figures of a cache that misbehaves ------------------------


def crowd(queries: int, distinct: int = 1, callers: int = 100) -> Crowd:
    return Crowd(callers, queries, min(queries, callers), 0.01, distinct)


def test_stampede_verdict() -> None:
    crowds = (crowd(100, distinct=100), crowd(100, distinct=100))
    good = StampedeFigures(crowds, (crowd(1), crowd(1)), (crowd(1), crowd(0)))
    assert good.result().problems == ()
    assert good.result().with_ == "1 origin query for 200 callers on 2 instances"
    twice = StampedeFigures(crowds, (crowd(2, distinct=2), crowd(1)), (crowd(1), crowd(1)))
    assert twice.result().problems == (
        "without the coordinator A and B made 3 origin queries, expected 1 or 2",
        "without the coordinator instance A made 2 origin queries",
        "without the coordinator instance A handed its callers 2 distinct objects, expected 1",
        "with the coordinator A and B made 2 origin queries, expected 1",
    )
    # Without the coordinator, B may find A's value in Redis already: fine.
    b_found_it = StampedeFigures(crowds, (crowd(1), crowd(0)), (crowd(0), crowd(1)))
    assert b_found_it.result().problems == ()
    no_stampede = StampedeFigures(
        (crowd(1), crowd(100, distinct=100)), (crowd(1), crowd(1)), (crowd(1), crowd(0))
    )
    assert no_stampede.result().problems == (
        "without a cache 200 callers made 101 queries: the stampede was not reproduced",
    )


def burst(*, failed: int, redis_served: int, l1_served: int = 10) -> Burst:
    return Burst(10, 20, l1_served, redis_served, failed, first=0.2, then=0.0001)


def test_outage_verdict() -> None:
    strict, graceful = burst(failed=20, redis_served=0), burst(failed=0, redis_served=20)
    assert OutageFigures("killed", strict, graceful).result().passed
    row = OutageFigures("killed", strict, graceful).result()
    assert (row.without, row.with_) == (
        "20/30 requests failed",
        "30/30 served, 200 ms then 0.10 ms",
    )
    strict_served = burst(failed=0, redis_served=20)  # a strict stack that hides the outage
    assert not OutageFigures("killed", strict_served, graceful).result().passed
    graceful_failed = burst(failed=3, redis_served=17)
    assert OutageFigures("killed", strict, graceful_failed).result().problems == (
        "graceful: 27/30 requests served and 3 failed, expected every request served",
    )
    l1_lost = burst(failed=20, redis_served=0, l1_served=9)
    assert not OutageFigures("black-holed", l1_lost, graceful).result().passed


def test_stale_l1_verdict() -> None:
    assert StaleFigures(25, 25, 59.8, 0.004, 1).result().passed
    never_fresh = StaleFigures(25, 25, 59.8, None, 0).result()
    assert not never_fresh.passed
    assert never_fresh.with_ == "B never fresh"
    not_reproduced = StaleFigures(25, 0, None, 0.004, 1).result()
    assert not_reproduced.problems == (
        "without a bus B served the old value in 0 of 25 reads: the incident was not reproduced",
    )


def test_tag_verdict() -> None:
    assert TagFigures(100, (100, 100), 299.9, 100, 0.01, (0, 0)).result().passed
    still_stale = TagFigures(100, (100, 100), 299.9, 100, 0.01, (0, 3)).result()
    assert still_stale.problems == ("with tags 0 reads on A and 3 on B were still stale",)
    partly_removed = TagFigures(100, (100, 100), 299.9, 60, 0.01, (0, 0)).result()
    assert partly_removed.problems == ("invalidate_by_tag removed 60 keys, expected 100",)
    not_delivered = TagFigures(100, (100, 100), 299.9, 100, None, (0, 0)).result()
    assert not not_delivered.passed


def side(errors: int, longest: float, calls: int = 700, queries: int = 90) -> Side:
    return Side(calls, errors, longest, queries, stale=0)


def test_database_dies_verdict() -> None:
    without = side(errors=310, longest=2.0)
    good = FailSafeFigures(without, side(errors=0, longest=0.101, calls=1200, queries=31))
    assert good.result().problems == ()
    assert (good.result().without, good.result().with_) == (
        "310/700 failed, longest wait 2.0 s, 90 queries",
        "0/1200 failed, longest wait 101 ms, 31 queries",
    )
    failed = FailSafeFigures(without, side(errors=3, longest=0.1)).result()
    assert failed.problems == ("with fail-safe 3 of 700 calls failed, expected none",)
    waited = FailSafeFigures(without, side(errors=0, longest=1.9)).result()
    assert waited.problems == (
        "with fail-safe a call waited 1.9 s, expected less than 500 ms (hard_timeout is 100 ms)",
    )
    # A database that never failed, or never hung, did not reproduce the incident.
    healthy = FailSafeFigures(side(errors=0, longest=0.02), side(errors=0, longest=0.02))
    assert healthy.result().problems == (
        "without fail-safe no call failed: the failure was not reproduced",
        "without fail-safe the longest call took 20 ms: the hang was not reproduced",
    )


def test_the_database_timeline() -> None:
    assert [phase_at(t) for t in (0.0, 0.49, 0.5, 0.99, 1.0, 2.99, 3.0)] == [
        "healthy",
        "healthy",
        "failing",
        "failing",
        "hanging",
        "hanging",
        "recovered",
    ]


def readers(p99: float, queries: int = 2, lives: int = 3, errors: int = 0) -> Readers:
    return Readers(p50=0.000002, p99=p99, queries=queries, lives=lives, stale=0, errors=errors)


def test_ttl_tradeoff_verdict() -> None:
    without = readers(0.101)
    good = ExpiryFigures(without, readers(0.0006), readers(0.00007, queries=3, lives=6))
    assert good.result().problems == ()
    assert good.result().with_ == "p99 0.60 ms SWR, 0.07 ms ahead; 2 and 3 queries"
    waited = ExpiryFigures(without, readers(0.09), readers(0.00007, queries=3, lives=6)).result()
    assert waited.problems == (
        "with stale-while-revalidate the p99 was 90 ms, expected under 20 ms: callers waited "
        "for the origin",
    )
    stampede = ExpiryFigures(without, readers(0.0006, queries=100), readers(0.0001)).result()
    assert stampede.problems == (
        "with stale-while-revalidate the origin was queried 100 times in 3 entry lives, "
        "expected at most one per life",
    )
    no_wait = ExpiryFigures(readers(0.0001), readers(0.0001), readers(0.0001, errors=2)).result()
    assert no_wait.problems == (
        "without freshness the p99 was 0.10 ms: the wait for the origin was not reproduced",
        "2 calls failed, expected none",
    )


def test_traffic_percentiles() -> None:
    traffic = Traffic([0.001 * n for n in range(1, 101)])
    assert (traffic.calls, traffic.percentile(50), traffic.percentile(99)) == (100, 0.05, 0.099)
    assert traffic.longest == 0.1
    assert (Traffic().percentile(99), Traffic().longest) == (0.0, 0.0)


def test_summary_table_lines_up() -> None:
    lines = summary_table(
        [Result("1 a", "x", "yy"), Result("2 bbb", "xxx", "y", ("broken",)), Result("3 c", "", "")]
    )
    header, rule, *rows = lines
    assert header.split() == ["incident", "without", "with", "verdict"]
    assert set(rule.strip()) == {"-"}
    assert [row.split()[-1] for row in rows] == ["PASS", "FAIL", "PASS"]
    assert len({line.index("PASS") for line in lines if "PASS" in line}) == 1


def test_durations_keep_the_useful_digits() -> None:
    assert [duration(s) for s in (0.0000014, 0.00008, 0.0012, 0.052, 0.2016, 2.51, 299.94)] == [
        "1.4 µs",
        "0.08 ms",
        "1.2 ms",
        "52 ms",
        "202 ms",
        "2.5 s",
        "300 s",
    ]


def test_the_proxy_url_keeps_login_database_and_options() -> None:
    url = "redis://user:secret@redis.internal:6380/3?ssl_cert_reqs=none"
    assert through_proxy(url, 4000) == "redis://user:secret@127.0.0.1:4000/3?ssl_cert_reqs=none"
    assert through_proxy("redis://localhost", 4000) == "redis://127.0.0.1:4000"
