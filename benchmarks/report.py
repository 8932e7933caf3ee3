"""Run every benchmark and write docs/performance.md and the chart docs/performance.png.

Every ``benchmarks/bench_*.py`` that follows the convention of ``benchmarks/_results.py``
(a ``TITLE`` and a ``run(quick=False) -> Report``) runs in a process of its own, one after
the other, printing what it prints on its own. Then the page is written from
``benchmarks/performance_template.md``: the run (date, command, machine), the DESIGN §5
targets with the verdicts the benchmarks computed, the chart, and per benchmark its
tables, peers side by side. The chart needs matplotlib (``pip install -e '.[chart]'``);
without it the page says so and the rest is written anyway.

Run from the repository root::

    .venv/bin/pip install -e '.[bench,chart]'
    .venv/bin/python benchmarks/report.py                                # the full run
    .venv/bin/python benchmarks/report.py --quick --output-dir /tmp/perf   # a smoke test
    .venv/bin/python benchmarks/report.py --only bench_bus --output-dir /tmp/perf

It exits 1 if a benchmark could not run (its section then shows the error), 0 otherwise,
whatever the verdicts.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the benchmarks import their helpers as top-level modules
    sys.path.insert(0, str(HERE))

from _harness import markdown_table, render_markdown  # noqa: E402
from _machine import describe, load_average  # noqa: E402
from _results import TARGETS, Comparison, Report, Verdict  # noqa: E402

TEMPLATE = HERE / "performance_template.md"
PAGE = "performance.md"
CHART = "performance.png"
LIBRARIES = (
    "layercache",
    "anyio",
    "trio",
    "hiredis",
    "orjson",
    "cachetools",
    "cashews",
    "aiocache",
    "redis",
    "coredis",
    "matplotlib",
)
COMMAND = "python benchmarks/report.py"
PLACEHOLDER = re.compile(r"\{\{([a-z-]+)(?::([A-Za-z0-9_]+))?\}\}")


# -- the benchmarks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """One ``benchmarks/bench_*.py``."""

    name: str
    summary: str
    """The first line of its docstring."""
    docstring: str
    title: str | None
    """Its ``TITLE``; None when it does not follow the convention."""
    problem: str = ""
    """Why it cannot be run by the report, if it cannot."""

    @property
    def script(self) -> str:
        return f"benchmarks/{self.name}.py"


@dataclass(frozen=True)
class Outcome:
    """What running one benchmark gave: its report, or the error that stopped it."""

    benchmark: Benchmark
    seconds: float
    report: Report | None = None
    error: str = ""


def discover(only: Sequence[str] = ()) -> list[Benchmark]:
    """Every ``bench_*.py`` here (or those ``only`` names), in the template's order first."""
    names = sorted(path.stem for path in HERE.glob("bench_*.py"))
    if only:
        wanted = [name if name.startswith("bench_") else f"bench_{name}" for name in only]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"no such benchmark: {', '.join(unknown)} (there are {names})")
        names = [name for name in names if name in wanted]
    template = TEMPLATE.read_text("utf-8")
    in_template = [m.group(2) for m in PLACEHOLDER.finditer(template) if m.group(1) == "benchmark"]
    order = {name: index for index, name in enumerate(in_template)}
    names.sort(key=lambda name: (order.get(name, len(in_template)), name))
    return [_inspect(name) for name in names]


def _inspect(name: str) -> Benchmark:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # reported on the page; the other benchmarks still run
        return Benchmark(name, "", "", None, f"cannot be imported: {type(error).__name__}: {error}")
    docstring = (module.__doc__ or "").strip()
    summary = docstring.partition("\n")[0]
    title = getattr(module, "TITLE", None)
    if not callable(getattr(module, "run", None)) or not isinstance(title, str):
        problem = "does not follow the convention (a TITLE and a run(quick) -> Report)"
        return Benchmark(name, summary, docstring, None, problem)
    return Benchmark(name, summary, docstring, title)


def run_in_child(name: str, quick: bool, result_file: str) -> None:
    """In the benchmark's own process: run it, and write its report as JSON."""
    module: Any = importlib.import_module(name)
    report = module.run(quick=quick)
    if not isinstance(report, Report):
        raise TypeError(f"{name}.run() returned {type(report).__name__}, not a Report")
    Path(result_file).write_text(report.to_json(), "utf-8")


def run_benchmark(benchmark: Benchmark, quick: bool) -> Outcome:
    """Run ``benchmark`` in a fresh interpreter, its output going to ours as it comes."""
    if benchmark.title is None:
        return Outcome(benchmark, 0.0, error=benchmark.problem)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layercache-report-") as directory:
        result_file = Path(directory) / "report.json"
        command = [sys.executable, __file__, "--child", benchmark.name, "--result-file"]
        command += [str(result_file), *(["--quick"] if quick else [])]
        sys.stdout.flush()
        errors: list[str] = []
        with subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) as child:
            assert child.stderr is not None
            for line in child.stderr:  # passed on as it comes, and kept for the page
                sys.stderr.write(line)
                errors.append(line)
        seconds = time.perf_counter() - started
        if child.returncode != 0 or not result_file.exists():
            tail = "".join(errors[-15:]).strip()
            return Outcome(benchmark, seconds, error=f"exit status {child.returncode}\n{tail}")
        return Outcome(benchmark, seconds, Report.from_json(result_file.read_text("utf-8")))


# -- the page ---------------------------------------------------------------------------------


def overall(verdicts: Sequence[Verdict]) -> str:
    """One verdict for a target checked several times (per backend, per variant)."""
    statuses = {verdict.status for verdict in verdicts}
    for status in ("FAIL", "PASS", "n/a"):
        if status in statuses:
            return status
    return "NOT MEASURED"


@dataclass(frozen=True)
class Run:
    """Everything the page is written from."""

    outcomes: tuple[Outcome, ...]
    quick: bool
    command: str
    started: datetime.datetime
    seconds: float
    machine: tuple[tuple[str, str], ...]
    server: str
    load_at_end: str
    chart: str | None
    """The chart's file name, or None."""
    chart_problem: str = ""

    @property
    def reports(self) -> list[tuple[Benchmark, Report]]:
        return [(o.benchmark, o.report) for o in self.outcomes if o.report is not None]

    @property
    def verdicts(self) -> list[tuple[Benchmark, Verdict]]:
        return [(b, verdict) for b, report in self.reports for verdict in report.verdicts]


def render_run(run: Run) -> str:
    mode = "full" if not run.quick else "**quick** (a smoke test: too few runs to read)"
    rows = [
        ("date", run.started.strftime("%Y-%m-%d %H:%M %Z")),
        ("command", f"`{run.command}`"),
        ("mode", mode),
        *(
            (label, f"{value} at start, {run.load_at_end} at end" if label == "load avg" else value)
            for label, value in run.machine
        ),
        ("Redis server", run.server),
        (
            "duration",
            f"{run.seconds:.0f} s: "
            + ", ".join(f"{o.benchmark.name} {o.seconds:.0f} s" for o in run.outcomes),
        ),
    ]
    text = markdown_table(("", ""), rows)
    if run.quick:
        text = (
            "> **Quick mode.** These figures come from a smoke test with a few short runs; "
            "they are noisy and say nothing about performance. Run "
            f"`{COMMAND}` for the real page.\n\n" + text
        )
    return text


def render_summary(run: Run) -> str:
    by_target: dict[str, list[Verdict]] = {target.id: [] for target in TARGETS}
    for _, verdict in run.verdicts:
        by_target[verdict.target].append(verdict)
    rows = []
    counts: dict[str, int] = {}
    for target in TARGETS:
        verdicts = by_target[target.id]
        status = overall(verdicts)
        counts[status] = counts.get(status, 0) + 1
        if verdicts:
            measured = "<br>".join(
                f"{v.status} [{v.backend}] {v.goal}: {v.measured}" for v in verdicts
            )
        else:
            measured = "no benchmark in this run checks it"
        rows.append((f"{target.path}: {target.goal}", f"**{status}**", measured))
    tally = ", ".join(
        f"{counts[status]} {status}"
        for status in ("PASS", "FAIL", "n/a", "NOT MEASURED")
        if status in counts
    )
    return (
        f"{len(TARGETS)} targets: {tally}. A target checked several times (per backend, "
        "per variant) fails if any check fails; *n/a* means its peer does not run there.\n\n"
        + markdown_table(("DESIGN §5 target", "verdict", "checks (from this run)"), rows)
    )


def render_chart(run: Run) -> str:
    if run.chart is None:
        return f"*No chart: {run.chart_problem}*"
    return (
        f"![layercache's speed-up over each peer, per scenario and backend]({run.chart})\n\n"
        "The chart: how many times faster layercache was than each peer (the peer's time ÷ "
        "layercache's, or layercache's throughput ÷ the peer's), on a log scale; below 1, "
        "the peer was faster. The black marks are the speed-ups DESIGN §5 asks for."
    )


def render_benchmark_list(run: Run) -> str:
    rows = [
        (f"`{o.benchmark.script}`", o.benchmark.summary or "-", o.benchmark.title or "-")
        for o in run.outcomes
    ]
    return markdown_table(("script", "what", "section"), rows)


def render_benchmark(run: Run, name: str) -> str:
    outcome = next((o for o in run.outcomes if o.benchmark.name == name), None)
    if outcome is None:
        if (HERE / f"{name}.py").exists():
            return f"*`benchmarks/{name}.py` was not part of this run.*"
        return f"*`benchmarks/{name}.py` does not exist (yet).*"
    script = outcome.benchmark.script
    if outcome.report is None:
        first, _, rest = outcome.error.partition("\n")
        details = f"\n\n```\n{rest}\n```" if rest.strip() else ""
        return f"*`{script}` did not run: {first}*{details}"
    report = outcome.report
    parts = [
        f"From `{script}`"
        + (f" ({report.settings})" if report.settings else "")
        + f", {outcome.seconds:.0f} s:"
    ]
    parts += [render_markdown(table) for table in report.tables]
    if report.verdicts:
        rows = [(f"**{v.status}**", v.backend, v.goal, v.measured) for v in report.verdicts]
        parts.append("**DESIGN §5 targets**")
        parts.append(markdown_table(("verdict", "backend", "target", "measured"), rows))
    if report.output.strip():
        parts.append(
            "<details><summary>What the script printed</summary>\n\n"
            f"```\n{report.output.rstrip()}\n```\n\n</details>"
        )
    return "\n\n".join(parts)


def render_other_benchmarks(run: Run, template: str) -> str:
    named = {m.group(2) for m in PLACEHOLDER.finditer(template) if m.group(1) == "benchmark"}
    sections = []
    for outcome in run.outcomes:
        if outcome.benchmark.name in named:
            continue
        title = outcome.benchmark.title or outcome.benchmark.name
        about = outcome.report.description if outcome.report else ""
        about = about or outcome.benchmark.docstring
        sections.append(f"## {title}\n\n{about}\n\n{render_benchmark(run, outcome.benchmark.name)}")
    return "\n\n".join(sections)


def render_page(run: Run, template: str) -> str:
    renderers: dict[str, Callable[[str], str]] = {
        "run": lambda _: render_run(run),
        "summary": lambda _: render_summary(run),
        "chart": lambda _: render_chart(run),
        "benchmarks": lambda _: render_benchmark_list(run),
        "benchmark": lambda name: render_benchmark(run, name),
        "other-benchmarks": lambda _: render_other_benchmarks(run, template),
    }

    def replace(match: re.Match[str]) -> str:
        kind, argument = match.group(1), match.group(2) or ""
        if kind not in renderers or (kind == "benchmark") != bool(argument):
            raise ValueError(f"{TEMPLATE.name}: unknown placeholder {match.group(0)}")
        return renderers[kind](argument)

    page = PLACEHOLDER.sub(replace, template)
    return re.sub(r"\n{3,}", "\n\n", page).rstrip() + "\n"


# -- the chart ----------------------------------------------------------------------------------

BACKEND_COLOURS = {"asyncio": "#4c72b0", "trio": "#dd8452"}


def draw_chart(comparisons: Sequence[Comparison], path: Path, subtitle: str) -> str:
    """Write the chart; return "" or why there is none."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return "matplotlib is not installed (`pip install -e '.[chart]'`)."
    if not comparisons:
        return "no benchmark in this run compared layercache with a peer."
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")

    scenarios: dict[str, list[str]] = {}
    for comparison in comparisons:
        peers = scenarios.setdefault(comparison.scenario, [])
        if comparison.peer not in peers:
            peers.append(comparison.peer)
    backends = [b for b in BACKEND_COLOURS if any(c.backend == b for c in comparisons)]
    values = [c.speedup for c in comparisons] + [c.goal for c in comparisons if c.goal]
    low, high = min(values) / 1.8, max(values) * 2.2

    heights = [len(peers) for peers in scenarios.values()]
    figure, axes = pyplot.subplots(
        len(scenarios),
        1,
        figsize=(11, 1.4 + 0.62 * sum(heights) + 0.5 * len(scenarios)),
        sharex=True,
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for axis, (scenario, peers) in zip(axes[:, 0], scenarios.items(), strict=True):
        found = [c for c in comparisons if c.scenario == scenario]
        _draw_scenario(axis, scenario, peers, found, backends, low)
    bottom = axes[-1, 0]
    bottom.set_xscale("log")
    bottom.set_xlim(low, high)
    bottom.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    bottom.set_xlabel("layercache's speed-up over the peer (log scale; > 1: layercache is faster)")
    handles = [
        matplotlib.patches.Patch(color=BACKEND_COLOURS[backend], label=backend)
        for backend in backends
    ]
    handles.append(
        matplotlib.lines.Line2D([], [], color="black", linewidth=2.5, label="DESIGN §5 goal")
    )
    handles.append(
        matplotlib.lines.Line2D([], [], color="grey", linestyle="--", label="as fast as the peer")
    )
    figure.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=9, frameon=False)
    figure.suptitle("layercache vs its peers", x=0.01, ha="left", fontweight="bold")
    figure.text(0.01, 0.955, subtitle, fontsize=8, color="dimgrey")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return ""


def _draw_scenario(
    axis: Any,
    scenario: str,
    peers: Sequence[str],
    comparisons: Sequence[Comparison],
    backends: Sequence[str],
    low: float,
) -> None:
    """One scenario's bars: a row per peer, a bar per backend, its goal marked."""
    bar = 0.8 / len(backends)
    for row, peer in enumerate(peers):
        for index, backend in enumerate(backends):
            y = row - 0.4 + bar * (index + 0.5)
            found = [c for c in comparisons if (c.peer, c.backend) == (peer, backend)]
            if not found:
                axis.text(
                    low * 1.1,
                    y,
                    f"does not run on {backend}",
                    va="center",
                    fontsize=8,
                    color="grey",
                )
                continue
            comparison = found[0]
            axis.barh(
                y, comparison.speedup, height=bar * 0.9, left=0, color=BACKEND_COLOURS[backend]
            )
            axis.text(
                comparison.speedup * 1.04,
                y,
                f"{comparison.speedup:.2f}x",
                va="center",
                fontsize=8,
                zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
            )
            if comparison.goal is not None:
                axis.plot(
                    [comparison.goal] * 2, [y - bar / 2, y + bar / 2], color="black", linewidth=2.5
                )
    axis.set_yticks(range(len(peers)), peers, fontsize=9)
    axis.set_ylim(len(peers) - 0.5, -0.5)
    axis.set_title(scenario, loc="left", fontsize=10, fontweight="bold")
    axis.axvline(1.0, color="grey", linewidth=1, linestyle="--")
    axis.grid(axis="x", which="major", alpha=0.3)


# -- main ---------------------------------------------------------------------------------------


def _server() -> str:
    try:
        from layercache.testing import ServerBinary

        return str(ServerBinary.find())
    except Exception as error:
        return f"none found ({error})"


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="few short runs: a smoke test (needs --output-dir)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help=f"where {PAGE} and {CHART} go (default: docs/ of this repository)",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this benchmark"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.quick and options.output_dir is None and not options.child:
        parser.error("--quick figures do not belong in docs/: give --output-dir")
    return options


def run_all(benchmarks: Sequence[Benchmark], quick: bool) -> list[Outcome]:
    """Every benchmark in turn, each in a process of its own."""
    outcomes = []
    for number, benchmark in enumerate(benchmarks, 1):
        print(f"\n=== [{number}/{len(benchmarks)}] {benchmark.script}", flush=True)
        outcome = run_benchmark(benchmark, quick)
        if outcome.error:
            print(f"=== {benchmark.script} did not run: {outcome.error}", file=sys.stderr)
        else:
            print(f"=== {benchmark.script}: {outcome.seconds:.0f} s", flush=True)
        outcomes.append(outcome)
        gc.collect()
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    options = _options(argv)
    if options.child:
        run_in_child(options.child, options.quick, options.result_file)
        return 0
    output = options.output_dir or ROOT / "docs"
    arguments = list(sys.argv[1:] if argv is None else argv)
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()
    machine = tuple(describe(LIBRARIES))
    outcomes = run_all(discover(options.only), options.quick)
    seconds = time.perf_counter() - started

    comparisons = [c for o in outcomes if o.report for c in o.report.comparisons]
    mode = "quick mode, not meaningful" if options.quick else "full run"
    subtitle = (
        f"{started_at:%Y-%m-%d}, {mode}; {dict(machine)['CPU']}, "
        f"{dict(machine)['layercache']}; peer time ÷ layercache time, per backend"
    )
    problem = draw_chart(comparisons, output / CHART, subtitle)
    if problem:
        print(f"\nNo chart: {problem}", file=sys.stderr)
    run = Run(
        outcomes=tuple(outcomes),
        quick=options.quick,
        command=shlex.join(["python", "benchmarks/report.py", *arguments]),
        started=started_at,
        seconds=seconds,
        machine=machine,
        server=_server(),
        load_at_end=load_average(),
        chart=None if problem else CHART,
        chart_problem=problem,
    )
    page = render_page(run, TEMPLATE.read_text("utf-8"))
    output.mkdir(parents=True, exist_ok=True)
    (output / PAGE).write_text(page, "utf-8")
    written = [str(output / PAGE)] + ([] if problem else [str(output / CHART)])
    print(f"\nwrote {' and '.join(written)} in {seconds:.0f} s")
    failed = [o.benchmark.name for o in outcomes if o.error]
    if failed:
        print(f"did not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
