"""What every scenario reports, how the demo prints it, and the measuring helpers.

A scenario measures figures, then derives a :class:`Result` from them with a pure
function: the verdict is computed from what was measured, never written in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

POLL_INTERVAL = 0.001
"""Seconds between two looks at something another task or another instance will change."""


@dataclass(frozen=True, slots=True)
class Result:
    """One line of the summary: an incident, the figures without and with the
    protection, and what (if anything) did not behave as promised. A scenario that could
    not run here says why in ``skipped``; that is not a failure."""

    incident: str
    without: str
    with_: str
    problems: tuple[str, ...] = ()
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        if self.problems:
            return "FAIL"
        return "SKIP" if self.skipped else "PASS"


def say(line: str = "") -> None:
    """Print a progress line at once, even when stdout is a pipe."""
    print(line, flush=True)


def duration(seconds: float) -> str:
    """``1.4 µs``, ``0.21 ms``, ``1.2 ms``, ``52 ms``, ``2.5 s``, ``60 s``: as many digits
    as are useful."""
    if seconds < 0.00001:
        return f"{seconds * 1_000_000:.1f} µs"
    if seconds >= 10:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    milliseconds = seconds * 1000
    if milliseconds >= 10:
        return f"{milliseconds:.0f} ms"
    if milliseconds >= 1:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:.2f} ms"


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


async def poll_until(condition: Callable[[], Awaitable[bool]], deadline: float) -> float | None:
    """Seconds until ``condition()`` held, looking every :data:`POLL_INTERVAL`; None if
    it still did not after ``deadline`` seconds. For things that happen in another
    instance (this is a demo measuring a delay, not a test waiting for an event)."""
    started = time.perf_counter()
    with anyio.move_on_after(deadline):
        # The change happens in another instance, which offers no event to wait on;
        # looking at what a user would see, as a user would, is the measurement.
        while not await condition():  # noqa: ASYNC110
            await anyio.sleep(POLL_INTERVAL)
        return time.perf_counter() - started
    return None


@dataclass
class Traffic:
    """What a crowd of steady readers saw: how long each call took (served or failed),
    and how many failed."""

    seconds: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def calls(self) -> int:
        return len(self.seconds)

    @property
    def longest(self) -> float:
        return max(self.seconds, default=0.0)

    def percentile(self, percent: float) -> float:
        """The smallest call time that ``percent`` % of the calls took at most."""
        ordered = sorted(self.seconds)
        if not ordered:
            return 0.0
        return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


async def steady_traffic(
    readers: int, seconds: float, pace: float, call: Callable[[int, int], Awaitable[object]]
) -> Traffic:
    """``readers`` tasks, each awaiting ``call(reader, n)`` for its n-th call and then
    pausing ``pace`` seconds, until ``seconds`` have passed since the start (a call under
    way then is waited for, and counted). Reader ``i`` starts ``i * pace / readers`` in,
    so the calls arrive evenly spread, as a service's requests do, not in waves.

    The pause is the traffic's own rhythm: a reader that never paused would never yield
    to the others while the memory layer answers it (a hit does not await anything).
    """
    traffic = Traffic()
    deadline = time.perf_counter() + seconds

    async def reader(index: int) -> None:
        await anyio.sleep(index * pace / readers)
        n = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(index, n)
            except Exception:
                traffic.errors += 1
            traffic.seconds.append(time.perf_counter() - started)
            n += 1
            await anyio.sleep(pace)

    async with anyio.create_task_group() as crowd:
        for index in range(readers):
            crowd.start_soon(reader, index)
    return traffic


def summary_table(results: Sequence[Result]) -> list[str]:
    """The closing table: one row per result, columns as wide as their contents."""
    header = Result("incident", "without", "with")
    rows = [header, *results]
    cells = [(row.incident, row.without, row.with_) for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(3)]
    lines = []
    for number, (row, row_cells) in enumerate(zip(rows, cells, strict=True)):
        verdict = "verdict" if row is header else row.verdict
        text = "  ".join(cell.ljust(width) for cell, width in zip(row_cells, widths, strict=True))
        lines.append(f"  {text}  {verdict}")
        if number == 0:
            lines.append("  " + "-" * (sum(widths) + 2 * len(widths) + len("verdict")))
    return lines
