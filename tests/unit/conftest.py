"""Unit tests: no Redis server, no subprocess (DESIGN §6).

The real-server fixtures (``redis_server``, ``own_redis_server``, ...) are not defined for
this directory, so a unit test asking for one errors with "fixture not found". A unit
test that starts a process itself (``RedisServer().start()``, ``subprocess.run``, a
``multiprocessing.Process``) fails before the process starts: it belongs in
tests/integration/.
"""

from __future__ import annotations

import multiprocessing.process
import subprocess
from typing import NoReturn

import pytest


def _refuse(*args: object, **kwargs: object) -> NoReturn:
    pytest.fail(
        "a unit test starts no process (no redis-server, no subprocess): "
        "move it to tests/integration/",
        pytrace=False,
    )


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse)
