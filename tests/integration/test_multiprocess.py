"""The stampede across real processes (``RedisSingleFlightCoordinator``), on both backends.

Four worker processes (tests/stampede_worker.py) of 100 concurrent callers ask for one
missing key. The parent drives them over stdin/stdout: it says ``go`` to all, learns
which one fetches and that the other three wait for its lock, and only then lets the
fetch finish (or kills the fetching process). No sleeps: every step waits for a line.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from layercache.testing import RedisServer

WORKER = Path(__file__).parents[1] / "stampede_worker.py"
PROCESSES = 4
CALLERS = 100
STEP_TIMEOUT = 30.0


class Worker:
    """A worker process and the lines it printed, read by a thread into a queue."""

    def __init__(self, arguments: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._pushed_back: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, *wanted: str) -> str:
        """The next line, which must start with one of ``wanted``."""
        try:
            line = (
                self._pushed_back.pop()
                if self._pushed_back
                else self.lines.get(timeout=STEP_TIMEOUT)
            )
        except queue.Empty:
            raise AssertionError(f"worker {self.process.pid} said nothing for a while") from None
        if line is None:
            assert self.process.stderr is not None
            raise AssertionError(f"worker exited: {self.process.stderr.read()}")
        assert line.startswith(wanted), (line, wanted)
        return line

    def push_back(self, line: str) -> None:
        self._pushed_back.append(line)

    def result(self) -> dict[str, Any]:
        line = self.expect("result ")
        self.process.wait(timeout=STEP_TIMEOUT)
        assert self.process.returncode == 0
        outcome: dict[str, Any] = json.loads(line.removeprefix("result "))
        return outcome

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STEP_TIMEOUT)

    def close(self) -> None:
        self.kill()
        self._reader.join(timeout=STEP_TIMEOUT)  # it stops at the end of the output
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def workers() -> Any:
    started: list[Worker] = []

    def start(arguments: list[str]) -> list[Worker]:
        started.extend(Worker(arguments) for _ in range(PROCESSES))
        return started

    yield start
    for worker in started:
        worker.close()


def _arguments(server: RedisServer, backend: str, *extra: str) -> list[str]:
    return [
        "--url",
        server.url,
        "--prefix",
        f"mp:{uuid.uuid4().hex[:8]}:",
        "--callers",
        str(CALLERS),
        "--backend",
        backend,
        "--coordinator",
        "--gate",
        *extra,
    ]


def _start_stampede(group: list[Worker]) -> tuple[Worker, list[Worker]]:
    """Say go to every worker; return the one that fetches and the ones that wait."""
    for worker in group:
        worker.expect("ready")
    for worker in group:
        worker.tell("go")
    first = [worker.expect("fetching", "waiting") for worker in group]
    fetching = [worker for worker, line in zip(group, first, strict=True) if line == "fetching"]
    assert len(fetching) == 1, first
    return fetching[0], [worker for worker in group if worker is not fetching[0]]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_four_processes_of_100_callers_fetch_once(
    redis_server: RedisServer, workers: Any, backend: str
) -> None:
    group = workers(_arguments(redis_server, backend))
    holder, _ = _start_stampede(group)
    holder.tell("finish")
    results = [worker.result() for worker in group]
    assert sum(result["fetches"] for result in results) == 1
    for result in results:
        assert result["callers"] == CALLERS
        assert result["pids"] == [holder.process.pid]  # everyone got the holder's value
        assert result["distinct"] == 1
    # A waiter may take the lock just after the holder let it go, and then find the
    # value on its second look: a lock taken, no fetch.
    assert sum(result["acquired"] for result in results) >= 1
    assert sum(result["waits"] for result in results) == PROCESSES - 1
    assert sum(result["takeovers"] for result in results) == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_holder_killed_mid_fetch_is_taken_over_by_exactly_one_process(
    redis_server: RedisServer, workers: Any, backend: str
) -> None:
    group = workers(_arguments(redis_server, backend, "--lease", "1.0", "--wait-timeout", "10"))
    holder, waiting = _start_stampede(group)
    holder.kill()  # SIGKILL mid-fetch: its lock stays until the lease runs out
    # One survivor takes over once the lease expires; the others go on waiting.
    lines: queue.Queue[tuple[Worker, str]] = queue.Queue()

    def watch(worker: Worker) -> None:
        lines.put((worker, worker.expect("fetching", "result ")))

    threads = [threading.Thread(target=watch, args=(worker,), daemon=True) for worker in waiting]
    for thread in threads:
        thread.start()
    successor, line = lines.get(timeout=STEP_TIMEOUT)
    assert line == "fetching"
    successor.tell("finish")
    for thread in threads:
        thread.join(timeout=STEP_TIMEOUT)
    others = [lines.get(timeout=STEP_TIMEOUT) for _ in range(len(waiting) - 1)]
    results = [successor.result()]
    for worker, line in others:
        assert line.startswith("result "), line  # no second takeover
        worker.push_back(line)
        results.append(worker.result())
    assert sum(result["fetches"] for result in results) == 1
    assert sum(result["takeovers"] for result in results) == 1
    for result in results:
        assert result["callers"] == CALLERS
        assert result["pids"] == [successor.process.pid]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_processes_sharing_a_hot_key_refresh_it_ahead_once_per_period(
    redis_server: RedisServer, workers: Any, backend: str
) -> None:
    """Four processes of 10 readers keep reading one key (TTL 1 s, refresh-ahead at
    half of it) for 3 s, with the coordinator and the bus: one origin call per
    refresh period in all, not one per process (a bound, not a timing)."""
    seconds, ttl = 3.0, 1.0
    arguments = [
        "--url", redis_server.url, "--prefix", f"mp:{uuid.uuid4().hex[:8]}:",
        "--callers", "10", "--backend", backend, "--coordinator", "--latency", "0.02",
        "--refresh", str(seconds), "--ttl", str(ttl),
    ]  # fmt: skip
    group = workers(arguments)
    for worker in group:
        worker.expect("ready")
    for worker in group:
        worker.tell("go")
    results = [worker.result() for worker in group]
    periods = seconds / (ttl * 0.5)
    fetches = sum(result["fetches"] for result in results)
    # The first load, then at most one refresh per period (each renews the TTL from
    # its end): per process, it would be four times as many.
    assert 2 <= fetches <= periods + 2, [result["fetches"] for result in results]
    assert sum(result["refreshes"] for result in results) >= 1
