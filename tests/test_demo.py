"""The README's first command: the demo must run and report success."""

from __future__ import annotations

import pytest

from layercache.__main__ import main
from layercache.testing import RedisServer


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_passes(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--backend", backend, "--callers", "200", "--origin-latency", "0.001"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK: 400 callers on two instances, 1 origin query" in out


def test_demo_on_a_real_server(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["demo", "--callers", "50", "--origin-latency", "0.001", "--redis-url", redis_server.url]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Redis at --redis-url" in out


def test_demo_rejects_a_bad_crowd() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--callers", "0"])
