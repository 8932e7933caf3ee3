"""The one harness every ``benchmarks/bench_*.py`` measures and prints with.

- :class:`Contender`: a name, a note for the tables and an async ``setup`` that starts
  it (pushing its clean-up on an exit stack) and returns the thing to time: a getter, a
  round. :func:`start_contenders` starts them in turn; a *foreign* peer that cannot run
  on this backend is kept, with the error it raised, instead of stopping the run.
- :class:`Samples`: one contender's figures for one kind of measurement on one backend,
  one per run, with their median, percentiles and spread; :func:`speedup` is
  layercache's ratio against a named peer (how many times better it did).
- :func:`take_turns`: one round of interleaved runs, each contender in turn, the order
  rotating from round to round so that no contender always follows the same one.
- :func:`side_by_side`: the usual table, a row per contender and the backends side by
  side, each figure with layercache's speed-up next to it; :func:`per_backend`, the same
  with cells of the benchmark's own.
- :func:`render_text` and :func:`render_markdown`: a :class:`_results.Table` for the
  terminal and for docs/performance.md. :func:`measure_and_print` runs a benchmark and
  prints its report by rendering the tables the page shows, so what a script prints on
  its own and what the page says are one thing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import math
import re
import statistics
import sys
import textwrap
import time
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TextIO, TypeVar

import anyio.lowlevel
from _machine import describe, load_average
from _results import Report, Table

from layercache.testing import RedisServer

BACKENDS = ("asyncio", "trio")
LAYERCACHE = "layercache CacheStack.get"
"""The contender every ratio is taken against."""
LATENCY = "latency"
"""The kind of measurement of a benchmark that has only one."""

A = TypeVar("A")
G = TypeVar("G")
K = TypeVar("K")
T = TypeVar("T")


# -- contenders ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender(Generic[A, G]):
    """One implementation under test. ``setup(stack, argument)`` starts it, with its
    clean-up on ``stack``, and returns what is timed (``G``); ``argument`` (``A``) is what
    every contender of the benchmark gets: the data, the server."""

    name: str
    setup: Callable[[AsyncExitStack, A], Awaitable[G]]
    note: str = ""
    kinds: tuple[str, ...] = (LATENCY,)
    """The measurements it takes part in."""
    foreign: bool = False
    """A peer that may not run on every backend: a failure to start is reported, not raised."""


class WrongValue(RuntimeError):
    """A contender returned something else than what was stored: never a "does not run"."""


def check_values(name: str, found: Mapping[str, object], expected: Mapping[str, object]) -> None:
    wrong = [key for key, value in found.items() if value != expected[key]]
    if wrong:
        raise WrongValue(f"{name} does not return what was stored, e.g. {wrong[0]!r}")


@dataclass
class Samples:
    """One contender's figures, one per run, for one kind of measurement on one backend."""

    name: str
    backend: str
    kind: str = LATENCY
    higher_is_better: bool = False
    """A throughput (more is better), not a time."""
    values: list[float] = field(default_factory=list)
    unsupported: str | None = None
    """Why it does not run on this backend (the error it raised), if it does not."""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def percentile(self, percent: float) -> float:
        """The smallest value that ``percent`` % of the values are at or below."""
        ordered = sorted(self.values)
        return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]

    def figure(self, per: float = 1.0, median: str = ".1f", spread: str = ".0f") -> str:
        """``median (min-max)``, each divided by ``per``."""
        low, high = min(self.values) / per, max(self.values) / per
        return f"{self.median / per:{median}} ({low:{spread}}-{high:{spread}})"


def speedup(ours: Samples, other: Samples) -> float:
    """How many times better ``ours`` did than ``other``: faster, or more throughput."""
    if ours.higher_is_better:
        return ours.median / other.median
    return other.median / ours.median


def find(measured: Iterable[Samples], name: str, backend: str, kind: str = LATENCY) -> Samples:
    for samples in measured:
        if (samples.name, samples.backend, samples.kind) == (name, backend, kind):
            return samples
    raise LookupError(name, backend, kind)


def peers_that_ran(
    measured: Sequence[Samples],
    backend: str,
    kind: str = LATENCY,
    leave_out: Collection[str] = (LAYERCACHE,),
) -> Iterator[tuple[Samples, float]]:
    """Every contender that ran on ``backend`` (but ``leave_out``), and layercache's
    speed-up over it."""
    reference = find(measured, LAYERCACHE, backend, kind)
    for samples in measured:
        if (samples.backend, samples.kind) != (backend, kind) or samples.name in leave_out:
            continue
        if samples.unsupported is None:
            yield samples, speedup(reference, samples)


@dataclass(frozen=True)
class _DoesNotRun:
    error: str


async def _start(
    contender: Contender[A, G],
    argument: A,
    outer: AsyncExitStack,
    probe: Callable[[str, G], Awaitable[object]],
) -> G | _DoesNotRun:
    stack = AsyncExitStack()
    try:
        started = await contender.setup(stack, argument)
        await probe(contender.name, started)
    except Exception as error:
        if not contender.foreign or isinstance(error, WrongValue):
            raise
        try:
            await stack.aclose()
        except Exception:
            pass  # it could not start on this backend; it cannot stop on it either
        return _DoesNotRun(f"{type(error).__name__}: {error}")
    await outer.enter_async_context(stack)
    return started


async def start_contenders(
    contenders: Sequence[Contender[A, G]],
    argument: A,
    outer: AsyncExitStack,
    backend: str,
    probe: Callable[[str, G], Awaitable[object]],
    throughput: Collection[str] = (),
) -> tuple[list[Samples], dict[str, list[tuple[Samples, G]]]]:
    """Start each contender in turn (kept running until ``outer`` closes) and await
    ``probe(name, started)`` on it. Returns one :class:`Samples` per contender and kind
    (``throughput``: the kinds where more is better), and per kind the contenders that
    run, with what to time."""
    measured: list[Samples] = []
    running: dict[str, list[tuple[Samples, G]]] = {}
    for contender in contenders:
        with warnings.catch_warnings():
            # A peer that fails on trio drops the coroutine it meant to schedule on
            # asyncio; the "never awaited" warning that follows is that failure.
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            started = await _start(contender, argument, outer, probe)
            gc.collect()
        for kind in contender.kinds:
            samples = Samples(contender.name, backend, kind, kind in throughput)
            measured.append(samples)
            if isinstance(started, _DoesNotRun):
                samples.unsupported = started.error
            else:
                running.setdefault(kind, []).append((samples, started))
    return measured, running


# -- timing -------------------------------------------------------------------------------

Timed = tuple[list[float], Callable[[], Awaitable[float]]]
"""Where a contender's figures go, and the call that measures one."""


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """``items`` starting at another one each turn."""
    if not items:
        return []
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


async def take_turns(turn: int, timed: Sequence[Timed], settle: bool = True) -> None:
    """One round of interleaved runs: every call of ``timed`` once, in the order rotated
    by ``turn``, its figure appended to its list. With ``settle``, a full collection and
    a checkpoint before each call, so that background tasks (cashews sweeps its store
    every second) run then, not inside a timed call."""
    for values, measure in rotated(timed, turn):
        if settle:
            gc.collect()
            await anyio.lowlevel.checkpoint()
        values.append(await measure())


async def mean_ns(call: Callable[[K], Awaitable[object]], arguments: Sequence[K]) -> float:
    """Nanoseconds per call of awaiting ``call`` on each of ``arguments``, one after the
    other in this task."""
    start = time.perf_counter_ns()
    for argument in arguments:
        await call(argument)
    return (time.perf_counter_ns() - start) / len(arguments)


async def mean_ns_fetching(
    get: Callable[[K, T], Awaitable[object]], keys: Sequence[K], fetcher: T
) -> float:
    """:func:`mean_ns` of ``get(key, fetcher)``: a cache's read with a fetcher, called as
    a caller calls it (a partial around ``get`` would add its own cost to every figure,
    and bring their ratios closer to 1)."""
    start = time.perf_counter_ns()
    for key in keys:
        await get(key, fetcher)
    return (time.perf_counter_ns() - start) / len(keys)


# -- tables -------------------------------------------------------------------------------


def side_by_side(
    title: str,
    contenders: Sequence[Contender[Any, Any]],
    measured: Sequence[Samples],
    kind: str,
    columns: tuple[str, str],
    figure: Callable[[Samples], str],
    note: str,
    reference: str = LAYERCACHE,
) -> Table:
    """A row per contender of ``kind``: its ``figure`` and the ``reference`` contender's
    speed-up over it (``columns`` names the two), asyncio and trio side by side."""

    def cells(name: str, backend: str) -> list[str]:
        samples = find(measured, name, backend, kind)
        ours = find(measured, reference, backend, kind)
        return [figure(samples), f"{speedup(ours, samples):.2f}x"]

    return per_backend(title, contenders, measured, kind, columns, cells, note)


def per_backend(
    title: str,
    contenders: Sequence[Contender[Any, Any]],
    measured: Sequence[Samples],
    kind: str,
    columns: Sequence[str],
    cells: Callable[[str, str], Sequence[str]],
    note: str,
) -> Table:
    """A row per contender of ``kind``: ``cells(name, backend)`` under ``columns``, asyncio
    and trio side by side; "does not run" where it did not start, with the error it
    raised in the note."""
    rows: list[tuple[str, ...]] = []
    errors: dict[str, str] = {}
    for contender in contenders:
        if kind not in contender.kinds:
            continue
        row = [contender.name, contender.note]
        for backend in BACKENDS:
            samples = find(measured, contender.name, backend, kind)
            if samples.unsupported is not None:
                row += ["does not run", *["-"] * (len(columns) - 1)]
                errors.setdefault(backend, samples.unsupported)
                continue
            row += cells(contender.name, backend)
        rows.append(tuple(row))
    for backend, error in errors.items():
        note += f" On {backend}, the peers that do not run raise `{error}`."
    header = ["implementation", "note"]
    for backend in BACKENDS:
        header += [f"{backend} {column}" for column in columns]
    return Table(title, tuple(header), tuple(rows), note)


_FIGURE = re.compile(r"^[0-9.,]+\s*(x|B|ms|s|µs|us)?(\s*\(.*\))?$")


def _right_aligned(rows: Sequence[Sequence[str]]) -> list[bool]:
    """Per column: mostly figures (aligned to the right, in markdown and in text)."""
    columns = len(rows[0]) if rows else 0
    figures = [sum(bool(_FIGURE.match(row[i])) for row in rows) for i in range(columns)]
    return [count * 2 > len(rows) for count in figures]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; columns of mostly figures are right-aligned."""
    rows = list(rows)
    right = _right_aligned(rows) or [False] * len(columns)
    lines = ["| " + " | ".join(_cell(column) for column in columns) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(table: Table) -> str:
    parts = [f"**{table.title}**", markdown_table(table.columns, table.rows)]
    if table.note:
        parts.append(table.note)
    return "\n\n".join(parts)


def render_text(table: Table, width: int = 100) -> str:
    """``table`` for a terminal: its title, aligned columns, and its note wrapped."""
    everything = [table.columns, *table.rows]
    widths = [max(len(row[i]) for row in everything) for i in range(len(table.columns))]
    right = _right_aligned(table.rows) or [False] * len(widths)

    def line(cells: Sequence[str]) -> str:
        aligned = (
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(cells, widths, right, strict=True)
        )
        return ("  " + "  ".join(aligned)).rstrip()

    lines = [table.title, line(table.columns), "  " + "-" * (sum(widths) + 2 * len(widths) - 2)]
    lines += [line(row) for row in table.rows]
    if table.note:
        lines.append(
            textwrap.fill(
                table.note,
                width,
                initial_indent="  ",
                subsequent_indent="  ",
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


# -- running and printing -----------------------------------------------------------------


def print_report(report: Report) -> None:
    for table in report.tables:
        print(render_text(table) + "\n")
    if report.verdicts:
        print("DESIGN §5 targets")
        for verdict in report.verdicts:
            print("  " + verdict.line)
        print()


class _Tee(io.StringIO):
    """Keeps what is written, and passes it on to ``echo``."""

    def __init__(self, echo: TextIO) -> None:
        super().__init__()
        self.echo = echo

    def write(self, text: str) -> int:
        self.echo.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.echo.flush()


def measure_and_print(measure: Callable[[], Report]) -> Report:
    """Run ``measure`` and print the report it returns by rendering its tables; that
    report, with everything printed meanwhile (still shown as it comes) as its ``output``."""
    started = time.perf_counter()
    printed = _Tee(sys.stdout)
    with contextlib.redirect_stdout(printed):
        report = measure()
        print_report(report)
        print(
            f"(measured in {time.perf_counter() - started:.0f} s; "
            f"load avg at the end {load_average()})"
        )
    return dataclasses.replace(report, output=printed.getvalue())


def print_machine(libraries: Sequence[str], *extra: tuple[str, str]) -> None:
    """The machine and the code measured, with ``extra`` lines before the load average."""
    print("Machine")
    for label, value in describe(libraries):
        if label == "load avg":
            for more, text in extra:
                print(f"  {more + ':':<12}{text}")
            value += " (at start)"  # the server shares the same cores
        print(f"  {label + ':':<12}{value}")
    print()


def command_line(doc: str | None) -> argparse.ArgumentParser:
    """A script's options, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


@dataclass(frozen=True)
class Server:
    url: str
    where: str
    """Where it comes from, for the header."""
    port: int | None


@contextlib.contextmanager
def redis_server(url: str | None = None) -> Iterator[Server]:
    """The server at ``url``, or a private one started for the run (and stopped after)."""
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
        yield Server(url, f"given with --redis-url ({where})", parts.port)
        return
    with RedisServer() as server:
        where = f"private, on loopback, started for this run: {server.binary}"
        yield Server(server.url, where, server.port)
