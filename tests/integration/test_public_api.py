"""The public surface seen from a fresh interpreter: ``layercache.testing`` imports
without pytest (the names and ``__all__`` are checked in tests/unit/test_public_api.py)."""

from __future__ import annotations


def test_testing_helpers_import_without_pytest() -> None:
    """The demo uses EmbeddedRedis from an install without the test extra."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "from layercache.testing import EmbeddedRedis, FakeClock, RedisServer\n"
        "import layercache.testing as t\n"
        "try:\n    t.LayerContract\nexcept ImportError:\n    print('contract needs pytest')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "contract needs pytest"
