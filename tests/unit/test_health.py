"""Layer health (degradation, circuit breaker) and actor supervision.

The health tests are synchronous state-machine tests on a FakeClock. The supervisor
tests wait on events set by the supervised actor, never on sleeps.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from anyio.abc import TaskStatus

from layercache import CircuitBreaker, GracefulDegradation, LayerUnavailableError
from layercache._health import LayerHealth
from layercache._redis._errors import RedisConfigurationError
from layercache._supervisor import Supervisor
from layercache.testing import FakeClock

BOOM = LayerUnavailableError("redis", "connection refused")


def _health(
    clock: FakeClock,
    degradation: GracefulDegradation | None = None,
    breaker: CircuitBreaker | None = None,
) -> LayerHealth:
    return LayerHealth("redis", degradation=degradation, breaker=breaker, clock=clock)


def test_strict_without_breaker_always_tries(clock: FakeClock) -> None:
    health = _health(clock)
    for _ in range(10):
        assert health.admit() is False
        health.failed(BOOM, False)
    assert health.state() == "healthy"
    assert (health.failures, health.consecutive_failures) == (10, 10)
    health.succeeded(False)
    assert health.consecutive_failures == 0


def test_degraded_layer_is_skipped_until_retry_after(clock: FakeClock) -> None:
    health = _health(clock, degradation=GracefulDegradation(retry_after=10))
    assert health.admit() is False
    health.failed(BOOM, False)
    assert health.state() == "degraded"
    assert health.until() == clock.now + 10
    clock.advance(9.9)
    assert health.admit() is None
    clock.advance(0.1)
    assert health.admit() is False  # tried again after the window
    health.succeeded(False)
    assert health.state() == "healthy"


def test_breaker_opens_after_threshold_then_half_opens_with_one_probe(clock: FakeClock) -> None:
    health = _health(clock, breaker=CircuitBreaker(threshold=3, reset_after=30))
    for _ in range(2):
        assert health.admit() is False
        health.failed(BOOM, False)
        assert health.state() == "healthy"
    assert health.admit() is False
    health.failed(BOOM, False)
    assert health.state() == "open"
    assert health.admit() is None
    clock.advance(30)
    assert health.state() == "half-open"
    assert health.admit() is True  # the probe
    assert health.admit() is None  # only one at a time
    health.failed(BOOM, True)
    assert health.state() == "open"  # a failed probe opens it again
    clock.advance(30)
    assert health.admit() is True
    health.succeeded(True)
    assert health.state() == "healthy"
    assert health.admit() is False


def test_an_abandoned_probe_frees_the_slot(clock: FakeClock) -> None:
    health = _health(clock, breaker=CircuitBreaker(threshold=1, reset_after=5))
    health.failed(BOOM, health.admit() or False)
    clock.advance(5)
    assert health.admit() is True
    health.abandoned(True)
    assert health.admit() is True


def test_degradation_and_breaker_together(clock: FakeClock) -> None:
    health = _health(
        clock,
        degradation=GracefulDegradation(retry_after=5),
        breaker=CircuitBreaker(threshold=2, reset_after=20),
    )
    health.failed(BOOM, False)
    assert health.state() == "degraded"
    clock.advance(5)
    assert health.admit() is False
    health.failed(BOOM, False)
    assert health.state() == "open"
    clock.advance(19)
    assert health.admit() is None
    clock.advance(1)
    assert health.admit() is True


def test_restarting_layer_is_not_tried(clock: FakeClock) -> None:
    health = _health(clock)
    health.crashed(RuntimeError("bug"))
    assert health.state() == "restarting"
    assert health.admit() is None
    health.restarted()
    assert health.state() == "healthy"
    assert health.admit() is False


def test_refusal_chains_the_last_failure(clock: FakeClock) -> None:
    health = _health(clock, breaker=CircuitBreaker(threshold=1, reset_after=30))
    health.failed(BOOM, False)
    error = health.refusal()
    assert isinstance(error, LayerUnavailableError)
    assert error.__cause__ is BOOM
    assert "open for 30.0 s" in str(error)


def test_state_changes_are_logged_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    health = _health(clock, degradation=GracefulDegradation(retry_after=1))
    with caplog.at_level(logging.INFO, logger="layercache.health"):
        for _ in range(5):
            health.failed(BOOM, False)
        clock.advance(1)
        for _ in range(5):
            health.admit()
            health.succeeded(False)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "degraded" in messages[0]
    assert "healthy again" in messages[1]


@pytest.mark.anyio
async def test_supervisor_restarts_a_crashed_actor() -> None:
    runs = 0
    second_run = anyio.Event()
    crashes: list[BaseException] = []
    restarts: list[bool] = []

    async def actor(*, task_status: TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs == 1:
            raise RuntimeError("a bug")
        second_run.set()
        await anyio.sleep_forever()

    supervisor = Supervisor(
        "test actor",
        actor,
        on_crash=crashes.append,
        on_restart=lambda: restarts.append(True),
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await second_run.wait()
            tg.cancel_scope.cancel()
    assert runs == 2
    assert [str(error) for error in crashes] == ["a bug"]
    assert restarts == [True]
    assert supervisor.restarts == 1


@pytest.mark.anyio
async def test_supervisor_does_not_retry_a_failed_start() -> None:
    runs = 0

    async def actor(*, task_status: TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("bad configuration")

    async with anyio.create_task_group() as tg:
        with pytest.raises(ValueError, match="bad configuration"):
            await tg.start(Supervisor("test actor", actor).run)
    assert runs == 1


@pytest.mark.anyio
async def test_supervisor_keeps_retrying_a_restart_that_fails_early() -> None:
    runs = 0
    third_run = anyio.Event()

    async def actor(*, task_status: TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise OSError("Redis still down")  # before started: not fatal on a restart
        task_status.started()
        if runs == 1:
            raise RuntimeError("a bug")
        third_run.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(Supervisor("test actor", actor).run)
            await third_run.wait()
            tg.cancel_scope.cancel()
    assert runs == 3


def _refused() -> LayerUnavailableError:
    error = LayerUnavailableError("redis", "Redis answered: NOPERM no permissions")
    error.__cause__ = RedisConfigurationError("Redis answered: NOPERM no permissions")
    return error


@pytest.mark.parametrize("graceful", [False, True])
def test_a_configuration_error_reads_as_misconfigured_until_a_success(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, graceful: bool
) -> None:
    degradation = GracefulDegradation(retry_after=10) if graceful else None
    health = _health(clock, degradation=degradation)
    caplog.set_level(logging.INFO, logger="layercache.health")
    health.failed(_refused(), False)
    assert health.state() == "misconfigured"
    assert health.configuration_errors == 1
    assert health.until() == (clock.now + 10 if graceful else None)
    clock.advance(10)  # the window is over: still misconfigured, not "healthy"
    assert health.state() == "misconfigured"
    assert health.admit() is False  # tried again: a fixed configuration is noticed
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "misconfigured" in errors[0].getMessage()
    health.failed(BOOM, False)  # a plain failure is a plain failure again
    assert health.state() == ("degraded" if graceful else "healthy")
    clock.advance(10)
    health.failed(_refused(), False)
    health.succeeded(False)
    assert health.state() == "healthy"
    assert health.configuration_errors == 2
