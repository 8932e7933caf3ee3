"""Run the six scenarios (the first four against one Redis), then print the summary and
the verdict."""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anyio

from .._redis._address import parse_redis_url
from .._redis_layer import RedisLayer
from .._stack import CacheStack
from ._expiry import ttl_tradeoff
from ._failsafe import database_dies
from ._outage import redis_down
from ._report import Result, say, summary_table
from ._stacks import new_prefix
from ._stale import stale_l1
from ._stampede import stampede
from ._tags import tag_invalidation


def run_demo(
    backend: str, callers: int, origin_latency: float, redis_url: str | None = None
) -> int:
    """Replay the five incidents and the TTL trade-off on ``backend``; return the exit
    status (0: all passed).

    Uses an embedded Redis-protocol server unless ``redis_url`` is given; the demo's keys
    live under a prefix of their own and are removed afterwards. The last two scenarios
    are about the origin and run on memory-only stacks.
    """
    with ExitStack() as resources:
        if redis_url is None:
            from ..testing import EmbeddedRedis

            try:
                url = resources.enter_context(EmbeddedRedis()).url
            except ImportError as error:  # pragma: no cover - depends on the install
                say(f"{error}, or pass --redis-url redis://host:port/db")
                return 2
            where = f"an embedded Redis-protocol server (fakeredis) at {url}"
        else:
            url = redis_url
            where = f"the Redis at {parse_redis_url(url).display()}"
        say(f"layercache demo on {backend}, against {where}")
        say("Five incidents that hit every memory + Redis cache, and the trade-off a short TTL")
        say("forces, each measured without and with layercache's protection.")
        if redis_url is None:
            say("(The embedded server is much slower than Redis, its pub/sub above all:")
            say("pass --redis-url for a real server's latencies.)")
        say()
        problem = anyio.run(_reachable, url, backend=backend)
        if problem is not None:
            say(f"cannot use that Redis: {problem}")
            return 2
        results = anyio.run(_scenarios, url, callers, origin_latency, backend=backend)
    say()
    say("Summary")
    for line in summary_table(results):
        say(line)
    say()
    failed = [result for result in results if not result.passed]
    skipped = [result for result in results if result.skipped and result.passed]
    for result in failed:
        for problem in result.problems:
            say(f"FAILED {result.incident}: {problem}")
    for result in skipped:
        say(f"SKIPPED {result.incident}: {result.skipped}")
    if failed:
        say(f"{len(failed)} of {len(results)} checks failed.")
        return 1
    if skipped:
        passed = len(results) - len(skipped)
        say(f"OK: {passed} checks passed, {len(skipped)} could not run here.")
    else:
        say(
            f"OK: all {len(results)} checks passed; layercache prevented the five incidents, "
            "and a short TTL kept no caller waiting."
        )
    return 0


async def _scenarios(redis_url: str, callers: int, origin_latency: float) -> list[Result]:
    results = await _guarded("1 stampede", stampede(redis_url, callers, origin_latency))
    with _quiet("layercache"):  # the outage makes the stack log warnings, on purpose
        results += await _guarded("2 Redis down", redis_down(redis_url))
    results += await _guarded("3 stale L1", stale_l1(redis_url))
    results += await _guarded("4 tag invalidation", tag_invalidation(redis_url))
    with _quiet("layercache"):  # the dead database makes the stack log warnings, on purpose
        results += await _guarded("5 database dies", database_dies())
    results += await _guarded("6 TTL trade-off", ttl_tradeoff())
    return results


async def _guarded(
    incident: str, scenario: Coroutine[Any, Any, Result | list[Result]]
) -> list[Result]:
    """Run a scenario; an error it raises fails it, and the demo goes on with the next."""
    try:
        outcome = await scenario
    except BrokenPipeError:
        raise  # nobody reads the output any more: not the scenario's failure
    except Exception as error:
        cause = _first_leaf(error)
        say(f"      stopped by {type(cause).__name__}: {cause}")
        return [Result(incident, "-", "-", (f"raised {type(cause).__name__}: {cause}",))]
    return outcome if isinstance(outcome, list) else [outcome]


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _reachable(redis_url: str) -> str | None:
    """None if a strict stack can read from ``redis_url``, else why not."""
    try:
        async with CacheStack([RedisLayer(url=redis_url, timeout=5.0)]) as cache:
            await cache.get(new_prefix("probe"))
    except Exception as error:
        return str(_first_leaf(error))
    return None


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide a logger's warnings (not its errors) for the duration of the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
