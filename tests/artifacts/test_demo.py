"""The README's first command: ``python -m layercache demo`` replays the four incidents.

The demo runs in-process through ``main`` on asyncio and on trio, against the embedded
server and against a real redis-server, and the tests read its exit status and the
figures it printed. Rules: figures are asserted (origin queries, errors, stale reads),
timings never (they belong to the machine); nothing sleeps. The verdicts are checked
apart: each scenario's figures go through the same pure function the demo uses, fed
with the figures of a broken cache.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
import redis

from layercache.__main__ import main
from layercache._demo import _run
from layercache._demo._outage import Burst, OutageFigures, through_proxy
from layercache._demo._report import Result, duration, summary_table
from layercache._demo._stale import StaleFigures
from layercache._demo._stampede import Crowd, StampedeFigures
from layercache._demo._tags import TagFigures
from layercache.testing import RedisServer

CALLERS = 200
FAST = ["--callers", str(CALLERS), "--origin-latency", "0.001"]


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    code = main(["demo", *arguments])
    return code, capsys.readouterr().out


def summary_row(out: str, incident: str) -> str:
    (row,) = [line for line in out.splitlines() if line.startswith(f"  {incident}  ")]
    return row


def assert_every_incident_prevented(out: str) -> None:
    """The figures the demo measured say what the four incidents and their cures are."""
    # 1: every caller without a cache queries the origin; with it, one query in all,
    # and every caller of an instance gets the same object.
    assert f"without a cache:         A {CALLERS} origin queries" in out
    per_instance = out.split("memory + Redis:")[1].split("+ the coordinator:")[0]
    assert per_instance.count(f"{CALLERS} callers got 1 distinct object") == 2
    assert per_instance.count("1 origin query,") + per_instance.count("0 origin queries,") == 2
    coordinated = out.split("+ the coordinator:")[1].split("[2/4]")[0]
    assert coordinated.count(f"{CALLERS} callers got 1 distinct object") == 2
    assert coordinated.count("1 origin query,") == 1
    assert coordinated.count("0 origin queries,") == 1
    row = summary_row(out, "1 stampede")
    assert re.search(
        rf"{2 * CALLERS} origin queries +1 origin query for {2 * CALLERS} callers on 2 instances",
        row,
    )
    # 2: strict raises for every request that needs Redis; graceful serves them all.
    for fault in ("killed", "black-holed"):
        row = summary_row(out, f"2 Redis {fault}")
        assert re.search(r"20/30 requests failed +30/30 served, ", row), row
    assert out.count("strict:   20/30 raised LayerUnavailableError, 10 L1 hits served") == 2
    assert out.count("graceful: 30/30 served;") == 2
    # 3: without a bus every read on B is stale; with it B gets the new value.
    match = re.search(r"B served the old price in (\d+)/(\d+) reads", out)
    assert match is not None, out
    assert match[1] == match[2], out
    assert int(match[1]) > 0
    assert "with RedisInvalidationBus: B served the new price" in out
    assert "(1 invalidation received)" in out
    # 4: without tags 200 stale reads; with them 100 keys removed and none stale.
    assert "without tags: 100/100 reads on A and 100/100 on B stale" in out
    assert "invalidate_by_tag('author:7') on A removed 100 keys" in out
    assert "then 0/100 reads on A and 0/100 on B stale" in out
    row = summary_row(out, "4 tag invalidation")
    assert re.search(r"200/200 reads stale, TTL \d+ s +0/200 stale, 100 keys gone", row), row
    assert out.count("PASS") == 5
    assert "FAIL" not in out
    assert "OK: all 5 checks passed" in out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_on_the_embedded_server(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "--backend", backend, *FAST)
    assert code == 0, out
    assert f"layercache demo on {backend}, against an embedded" in out
    assert_every_incident_prevented(out)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_on_a_real_server(
    backend: str, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--backend", backend, "--redis-url", redis_server.url, *FAST)
    assert code == 0, out
    assert f"layercache demo on {backend}, against the Redis at redis://127.0.0.1:" in out
    assert_every_incident_prevented(out)
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.keys("layercache-demo:*") == []  # it cleans up after itself


def test_demo_on_a_unix_socket_skips_the_proxy_scenario(
    unix_redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--redis-url", unix_redis_server.url, *FAST)
    assert code == 0, out
    assert re.search(r"2 Redis down +not run +not run +SKIP", out), out
    assert "SKIPPED 2 Redis down: the fault proxy needs a Redis on TCP" in out
    assert out.count("PASS") == 3
    assert "OK: 3 checks passed, 1 could not run here." in out


def test_a_failing_scenario_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def stale_bus(redis_url: str) -> Result:
        return StaleFigures(25, 25, 60.0, None, 0).result()

    monkeypatch.setattr(_run, "stale_l1", stale_bus)
    code, out = run(capsys, *FAST)
    assert code == 1, out
    assert re.search(
        r"3 stale L1 +B stale in 25/25 reads \(L1 TTL 60 s\) +B never fresh +FAIL", out
    )
    assert "FAILED 3 stale L1: with the bus B still served the old value" in out
    assert "1 of 5 checks failed." in out
    assert out.count("PASS") == 4  # the others ran and passed


def test_a_scenario_that_raises_fails_and_the_others_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(redis_url: str) -> Result:
        raise ExceptionGroup("demo", [RuntimeError("the tag index is gone")])

    monkeypatch.setattr(_run, "tag_invalidation", broken)
    code, out = run(capsys, *FAST)
    assert code == 1, out
    assert "stopped by RuntimeError: the tag index is gone" in out
    assert "FAILED 4 tag invalidation: raised RuntimeError: the tag index is gone" in out
    assert out.count("PASS") == 4


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_an_unreachable_redis_is_reported(
    refusing_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--redis-url", f"redis://127.0.0.1:{refusing_port}/0")
    assert code == 2
    assert "cannot use that Redis: layer 'redis' is unavailable" in out


@pytest.mark.parametrize(
    "arguments",
    [
        ["--callers", "0"],
        ["--origin-latency", "-1"],
        ["--redis-url", "http://localhost"],
        ["--backend", "curio"],
    ],
)
def test_bad_arguments_are_rejected(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["demo", *arguments])
    assert raised.value.code == 2


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
    assert [duration(s) for s in (0.00008, 0.0012, 0.052, 0.2016, 2.51, 299.94)] == [
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
