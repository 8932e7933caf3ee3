"""Every example runs to a clean exit, on both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "100 concurrent callers, then one more: 1 query" in result.stdout
    assert "removed 2; left: ['article:43']" in result.stdout
