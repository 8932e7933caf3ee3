"""What a benchmark hands to ``benchmarks/report.py``: the convention every
``benchmarks/bench_*.py`` follows (see ``benchmarks/README.md``).

A benchmark module exposes::

    TITLE: str                                  # a heading for docs/performance.md
    def run(quick: bool = False) -> Report: ...

``run`` measures (starting whatever servers it needs and stopping them again), prints
its tables through ``_harness.measure_and_print``, and returns the same results as data:
titled :class:`Table` s, one :class:`Verdict` per DESIGN §5 target it checks (computed
from the measurements), and :class:`Comparison` s (layercache against one peer, as a
speed-up) for the chart. ``quick=True`` is a smoke test: few, short runs, seconds in all.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

Status = Literal["PASS", "FAIL", "n/a", "info"]


@dataclass(frozen=True)
class Target:
    """One row of DESIGN §5 (a row with several figures is split into several targets)."""

    id: str
    path: str
    goal: str


TARGETS = (
    Target(
        "l1-vs-cachetools",
        "L1 hit, `await cache.get(k)`",
        "median ≤ `cachetools.TTLCache` lookup wrapped in an `async def`",
    ),
    Target("l1-vs-cashews", "L1 hit", "≥ 5x faster than cashews' memory backend (asyncio)"),
    Target(
        "l1-vs-aiocache", "L1 hit", "≥ 20x faster than aiocache's `SimpleMemoryCache` (asyncio)"
    ),
    Target(
        "l2-sequential-asyncio",
        "L2 hit, sequential, real Redis",
        "≤ 1.0x a raw `redis.asyncio` GET + JSON decode (asyncio)",
    ),
    Target(
        "l2-sequential-trio", "L2 hit, sequential, real Redis", "≤ 0.5x a raw coredis GET (trio)"
    ),
    Target(
        "l2-concurrent",
        "L2 hits, 200 concurrent tasks, distinct keys",
        "≥ 2x the throughput of 200 tasks doing raw `redis.asyncio` GETs",
    ),
    Target("stampede-process", "stampede", "1 000 concurrent callers → 1 fetch"),
    Target(
        "stampede-processes", "stampede", "4 processes x 100 callers with the coordinator → 1 fetch"
    ),
    Target(
        "invalidation",
        "cross-instance invalidation",
        "median delivery ≤ 1.5x a raw PUBLISH→subscriber round trip",
    ),
    Target("memory", "memory", "≤ 300 bytes of overhead per small L1 entry at 100 000 entries"),
    Target("stale-hit", "stale or refresh-ahead hit", "≤ 1.2x a fresh L1 hit"),
    Target(
        "expiry",
        "a hot key across its expiry, 200 concurrent readers",
        "with stale-while-revalidate no caller waits for the origin: p99 ≤ 5x a fresh-hit p99",
    ),
    Target(
        "origin-down-errors",
        "origin down 10 s, stale-if-error on",
        "0 caller errors for keys seen before",
    ),
    Target(
        "origin-down-calls",
        "origin down 10 s, stale-if-error on",
        "origin calls ≤ 1 per key per `error_backoff`",
    ),
)
TARGET_IDS = frozenset(target.id for target in TARGETS)


@dataclass(frozen=True)
class Verdict:
    """One check of a DESIGN §5 target on one backend, from this run's figures.

    ``status`` is PASS or FAIL when the check ran, ``n/a`` when it could not (a peer that
    does not run on the backend), ``info`` for a figure shown beside a target without
    being one. ``goal`` says what was checked, ``measured`` the figures it was decided on.
    """

    target: str
    status: Status
    backend: str
    goal: str
    measured: str

    def __post_init__(self) -> None:
        if self.target not in TARGET_IDS:
            raise ValueError(f"unknown DESIGN §5 target {self.target!r}; see _results.TARGETS")

    @classmethod
    def check(cls, target: str, passed: bool, backend: str, goal: str, measured: str) -> Verdict:
        return cls(target, "PASS" if passed else "FAIL", backend, goal, measured)

    @property
    def line(self) -> str:
        """The line the scripts print in their ``DESIGN §5 targets`` block."""
        return f"{self.status:<4} [{self.backend}] {self.goal}: {self.measured}"


@dataclass(frozen=True)
class Table:
    """A result table for the markdown report: the cells are already formatted."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    """Shown under the table: what the ratio columns mean, what a dash means."""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"{self.title}: row {row!r} does not match {self.columns!r}")


@dataclass(frozen=True)
class Comparison:
    """layercache against one peer in one scenario, on one backend, for the chart.

    ``speedup`` is how many times faster layercache was: the peer's time ÷ layercache's,
    or layercache's throughput ÷ the peer's (below 1, layercache was slower). ``goal`` is
    the speed-up DESIGN §5 asks for against this peer, if any.
    """

    scenario: str
    peer: str
    backend: str
    speedup: float
    goal: float | None = None


@dataclass(frozen=True)
class Report:
    """What one benchmark measured, ready to be written into docs/performance.md."""

    title: str
    tables: tuple[Table, ...]
    verdicts: tuple[Verdict, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    settings: str = ""
    """The parameters of this run (runs, batch sizes, ...), one line."""
    output: str = ""
    """What the script printed while it ran."""
    description: str = ""
    """Markdown about what is measured, for a benchmark the report template does not
    describe itself (the module docstring is used when this is empty)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        tables = tuple(
            Table(t["title"], tuple(t["columns"]), tuple(map(tuple, t["rows"])), t["note"])
            for t in data.pop("tables")
        )
        verdicts = tuple(Verdict(**verdict) for verdict in data.pop("verdicts"))
        comparisons = tuple(Comparison(**comparison) for comparison in data.pop("comparisons"))
        return cls(tables=tables, verdicts=verdicts, comparisons=comparisons, **data)
