"""The supervisor: keeps an actor running, restarting it when it crashes.

An actor that fails *before* it reports itself started fails the stack's start (a bad
configuration is not retried forever). One that crashes *after* is restarted with
jittered exponential back-off; meanwhile its layer counts as restarting, so the stack
skips it (graceful degradation) or refuses requests to it (strict). Cancellation, the
stack's exit, is never caught.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

logger = logging.getLogger("layercache.supervisor")

RESTART_FIRST = 0.1
RESTART_MAX = 10.0
HEALTHY_RUN = 60.0
"""A run at least this long resets the back-off to its first step."""

Run = Callable[..., Awaitable[None]]


class _Status(TaskStatus[None]):
    """Passes ``started()`` on the first run; records it on every run."""

    def __init__(self, outer: TaskStatus[None] | None, on_started: Callable[[], None]) -> None:
        self._outer = outer
        self._on_started = on_started
        self.started_once = False

    def started(self, value: Any = None) -> None:
        self.started_once = True
        if self._outer is not None:
            self._outer.started(value)
            self._outer = None
        self._on_started()


class Supervisor:
    """Runs ``run(task_status=...)`` and restarts it after a crash."""

    def __init__(
        self,
        name: str,
        run: Run,
        *,
        on_crash: Callable[[BaseException], None] = lambda error: None,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._run = run
        self._on_crash = on_crash
        self._on_restart = on_restart
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} restarts={self.restarts}>"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        status = _Status(task_status, lambda: None)
        first_run = True
        delay = RESTART_FIRST
        while True:
            began = anyio.current_time()
            try:
                await self._run(task_status=status)
            except Exception as error:
                if first_run and not status.started_once:
                    raise  # never started: a configuration error, for the stack's start
                # A restart that fails before starting is one more crash: the stack is
                # running and must not die of it.
                self._on_crash(error)
                logger.exception("%s crashed; restarting in about %.1f s", self.name, delay)
            else:
                logger.error("%s returned on its own; restarting it", self.name)
            if anyio.current_time() - began > HEALTHY_RUN:
                delay = RESTART_FIRST  # it ran well for a while: not a crash loop
            # Full jitter, so actors that crashed together do not restart in step.
            await anyio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, RESTART_MAX)
            first_run = False
            self.restarts += 1
            status = _Status(None, self._restarted)

    def _restarted(self) -> None:
        logger.warning("%s restarted", self.name)
        self._on_restart()
