"""Shared fixtures. Every async test runs once on asyncio and once on trio."""

from __future__ import annotations

import pytest

from layercache.testing import FakeClock


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
