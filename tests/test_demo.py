"""The README's first command: the demo must run and report success."""

from __future__ import annotations

import pytest

from layercache.__main__ import main


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_passes(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--backend", backend, "--callers", "200", "--origin-latency", "0.001"])
    out = capsys.readouterr().out
    assert code == 0
    assert "OK: 200 callers, 1 origin query" in out


def test_demo_rejects_a_bad_crowd() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--callers", "0"])
