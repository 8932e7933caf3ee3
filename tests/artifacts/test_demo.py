"""The README's first command: ``python -m layercache demo`` replays the five incidents
and the TTL trade-off.

The demo runs in-process through ``main`` on asyncio and on trio, against the embedded
server and against a real redis-server, and the tests read its exit status and the
figures it printed. Rules: figures are asserted (origin queries, errors, stale reads),
timings never (they belong to the machine); nothing sleeps. The verdicts are checked
apart, in tests/unit/test_demo.py: each scenario's figures go through the same pure
function the demo uses, fed with the figures of a broken cache.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
import redis

from layercache.__main__ import main
from layercache._demo import _run
from layercache._demo._failsafe import FailSafeFigures, Side
from layercache._demo._report import Result
from layercache.testing import RedisServer

pytestmark = pytest.mark.slow

CALLERS = 200
FAST = ["--callers", str(CALLERS), "--origin-latency", "0.001"]


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    code = main(["demo", *arguments])
    return code, capsys.readouterr().out


def summary_row(out: str, incident: str) -> str:
    (row,) = [line for line in out.splitlines() if line.startswith(f"  {incident}  ")]
    return row


def assert_every_incident_prevented(out: str) -> None:
    """The figures the demo measured say what the five incidents, the TTL trade-off and
    their cures are."""
    # 1: every caller without a cache queries the origin; with it, one query in all,
    # and every caller of an instance gets the same object.
    assert f"without a cache:         A {CALLERS} origin queries" in out
    per_instance = out.split("memory + Redis:")[1].split("+ the coordinator:")[0]
    assert per_instance.count(f"{CALLERS} callers got 1 distinct object") == 2
    assert per_instance.count("1 origin query,") + per_instance.count("0 origin queries,") == 2
    coordinated = out.split("+ the coordinator:")[1].split("[2/6]")[0]
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
    # 5: without fail-safe calls fail and wait for the hung database; with it none fails.
    match = re.search(
        r"without fail-safe: calls (\d+)/(\d+) failed, longest wait ([\d.]+ m?s)", out
    )
    assert match is not None, out
    assert int(match[1]) > 0, out
    assert match[3].endswith(" s"), out  # seconds: the hang, not milliseconds
    assert re.search(r"with fail-safe: +calls 0/\d+ failed, longest wait [\d.]+ ms, ", out), out
    assert re.search(r"\(\d+ stale answers\)", out.split("with fail-safe:")[1]), out
    row = summary_row(out, "5 database dies")
    assert re.search(r"[1-9]\d*/\d+ failed, .* +0/\d+ failed, longest wait [\d.]+ ms, ", row), row
    # 6: without freshness the readers wait for the origin; with it, one query per expiry.
    tradeoff = out.split("[6/6]")[1]
    assert re.search(
        r"without freshness: +p50 [\d.]+ (µs|ms), p99 \d+ ms, [12] origin quer", tradeoff
    )
    assert re.search(r"stale-while-revalidate: +p50 .*, [1-3] origin quer", tradeoff), tradeoff
    assert re.search(r"refresh-ahead \(0.5\): +p50 .*, [1-6] origin quer", tradeoff), tradeoff
    assert out.count("PASS") == 7
    assert "FAIL" not in out
    assert "OK: all 7 checks passed" in out


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
    assert out.count("PASS") == 5
    assert "OK: 5 checks passed, 1 could not run here." in out


def test_a_failing_scenario_fails_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def hung_failsafe() -> Result:  # a cache whose callers waited for the hang
        without = Side(700, 310, 2.0, 90, stale=0)
        return FailSafeFigures(without, Side(1200, 0, 1.9, 31, stale=800)).result()

    monkeypatch.setattr(_run, "database_dies", hung_failsafe)
    code, out = run(capsys, *FAST)
    assert code == 1, out
    assert re.search(
        r"5 database dies +310/700 failed, longest wait 2.0 s, 90 queries +0/1200 failed, "
        r"longest wait 1.9 s, 31 queries +FAIL",
        out,
    )
    assert "FAILED 5 database dies: with fail-safe a call waited 1.9 s" in out
    assert "1 of 7 checks failed." in out
    assert out.count("PASS") == 6  # the others ran and passed


def test_a_scenario_that_raises_fails_and_the_others_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken() -> Result:
        raise ExceptionGroup("demo", [RuntimeError("the origin is gone")])

    monkeypatch.setattr(_run, "ttl_tradeoff", broken)
    code, out = run(capsys, *FAST)
    assert code == 1, out
    assert "stopped by RuntimeError: the origin is gone" in out
    assert "FAILED 6 TTL trade-off: raised RuntimeError: the origin is gone" in out
    assert out.count("PASS") == 6


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
