"""``benchmarks/report.py --quick`` writes a complete performance page and its chart.

The report runs every benchmark (each starts its own real redis-server) in quick mode,
into a temporary directory: docs/ is never touched. Synchronous subprocess tests, so
they run once, not per anyio backend.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
REPORT = "benchmarks/report.py"
SECTIONS = (
    "# Performance",
    "## The run",
    "## Summary: the DESIGN §5 targets",
    "## L1 hit latency and memory per entry",
    "## Redis (L2)",
    "## Cross-instance invalidation",
    "## A slow Redis: strict vs graceful degradation",
    "## Freshness: stale and early hits, a hot key's expiry, the origin down",
    "## Methodology",
)
DESIGN_TARGETS = (
    "L1 hit, `await cache.get(k)`: median ≤ `cachetools.TTLCache` lookup",
    "≥ 5x faster than cashews",
    "≥ 20x faster than aiocache",
    "≤ 1.0x a raw `redis.asyncio` GET",
    "≤ 0.5x a raw coredis GET",
    "≥ 2x the throughput of 200 tasks",
    "1 000 concurrent callers → 1 fetch",
    "4 processes x 100 callers with the coordinator → 1 fetch",
    "median delivery ≤ 1.5x a raw PUBLISH→subscriber",
    "≤ 300 bytes of overhead per small L1 entry",
    "stale or refresh-ahead hit: ≤ 1.2x a fresh L1 hit",
    "a hot key across its expiry, 200 concurrent readers: with stale-while-revalidate",
    "origin down 10 s, stale-if-error on: 0 caller errors for keys seen before",
    "origin down 10 s, stale-if-error on: origin calls ≤ 1 per key per `error_backoff`",
)


def _report(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, REPORT, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def _section(page: str, heading: str) -> str:
    start = page.index(heading + "\n")
    end = page.find("\n## ", start + len(heading))
    return page[start : end if end != -1 else len(page)]


def test_quick_report_writes_every_section_and_a_verdict_per_target(tmp_path: Path) -> None:
    done = _report("--quick", "--output-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    page = (tmp_path / "performance.md").read_text("utf-8")

    for heading in SECTIONS:
        assert f"\n{heading}\n" in f"\n{page}", heading
    assert "{{" not in page  # every placeholder was filled
    assert "**Quick mode.**" in page
    assert f"`python {REPORT} --quick --output-dir {tmp_path}`" in page
    run = _section(page, "## The run")
    for label in ("date", "CPU", "cores", "Python", "libraries", "layercache", "Redis server"):
        assert f"| {label} | " in run, label

    # One summary row per DESIGN §5 target, each with a verdict the run computed.
    summary = _section(page, "## Summary: the DESIGN §5 targets")
    rows = [line for line in summary.splitlines() if re.match(r"\| .* \| \*\*", line)]
    assert len(rows) == len(DESIGN_TARGETS), rows
    for target, row in zip(DESIGN_TARGETS, rows, strict=True):
        assert target in row, (target, row)
        verdict = re.search(r"\| \*\*([^*]+)\*\* \|", row)
        assert verdict is not None, row
        assert verdict.group(1) in ("PASS", "FAIL", "n/a"), row

    # Every benchmark section has its tables, peers side by side on both backends.
    for heading, peer in (
        ("## L1 hit latency and memory per entry", "aiocache SimpleMemoryCache"),
        ("## Redis (L2)", "coredis GET + loads"),
        ("## Cross-instance invalidation", "memory + bus"),
        ("## A slow Redis: strict vs graceful degradation", "cold miss"),
        (
            "## Freshness: stale and early hits, a hot key's expiry, the origin down",
            "cashews @cache.early",
        ),
    ):
        section = _section(page, heading)
        assert "did not run" not in section, section[:2000]
        assert f"| {peer} |" in section, heading
        assert "asyncio" in section, heading
        assert "trio" in section, heading

    chart = (tmp_path / "performance.png").read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n")
    assert "](performance.png)" in page


def test_quick_report_without_matplotlib_writes_the_page_without_chart(tmp_path: Path) -> None:
    # A package named matplotlib that cannot be imported stands for a missing one.
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not here')\n")
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    done = _report("--quick", "--only", "bench_bus", "--output-dir", str(output), env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "No chart: matplotlib is not installed" in done.stderr
    page = (output / "performance.md").read_text("utf-8")
    assert "*No chart: matplotlib is not installed" in page
    assert not (output / "performance.png").exists()
    assert "**NOT MEASURED**" in page  # only the bus ran
    assert "*`benchmarks/bench_redis.py` was not part of this run.*" in page


def test_quick_figures_never_go_into_docs() -> None:
    done = _report("--quick")
    assert done.returncode == 2
    assert "--output-dir" in done.stderr
