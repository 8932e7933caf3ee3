"""Every call of a stack, made from an event loop that does not own it: the unit and
the integration tests of DESIGN §2 "One owner" share them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from layercache import CacheStack


async def _fetch_must_not_run() -> object:
    raise AssertionError("a foreign caller's fetcher ran")


FOREIGN_CALLS: list[tuple[str, Callable[[CacheStack], Awaitable[Any]]]] = [
    ("get of a memory hit", lambda cache: cache.get("hit")),
    ("get of a remote or missing key", lambda cache: cache.get("remote")),
    ("get with fetcher", lambda cache: cache.get("missing", _fetch_must_not_run)),
    ("get_many", lambda cache: cache.get_many(["hit", "remote"])),
    ("set", lambda cache: cache.set("hit", "changed", tags=["t"])),
    ("set_many", lambda cache: cache.set_many({"hit": "changed", "new": 1})),
    ("delete", lambda cache: cache.delete("hit")),
    ("delete_many", lambda cache: cache.delete_many(["hit", "remote"])),
    ("invalidate_by_tag", lambda cache: cache.invalidate_by_tag("t")),
    ("expire", lambda cache: cache.expire("hit")),
    ("expire_many", lambda cache: cache.expire_many(["hit", "remote"])),
    ("expire_by_tag", lambda cache: cache.expire_by_tag("t")),
    ("clear", lambda cache: cache.clear()),
    ("__aenter__", lambda cache: cache.__aenter__()),
    ("__aexit__", lambda cache: cache.__aexit__(None, None, None)),
]
"""Every public call of an entered stack, with arguments that would change it: a stack
whose memory holds ``hit`` (tagged ``t``) and whose next layer holds ``remote``."""


def call_foreign(cache: CacheStack, loop: str) -> dict[str, object]:
    """Make every call of :data:`FOREIGN_CALLS` on a new event loop in this thread.

    ``loop`` is ``"asyncio"`` or ``"trio"``, or ``"none"`` to drive each coroutine by
    hand, with no loop at all. Returns what each call returned or raised (a call that
    waits, with no loop to wait on, is closed and reported as ``"suspended"``; one that
    waits 10 s on its loop raises ``TimeoutError``).
    """
    outcomes: dict[str, object] = {}
    if loop == "none":
        for name, call in FOREIGN_CALLS:
            coroutine = call(cache)
            assert isinstance(coroutine, Coroutine)
            try:
                coroutine.send(None)
            except StopIteration as returned:
                outcomes[name] = returned.value
            except BaseException as error:  # the outcome is what the test looks at
                outcomes[name] = error
            else:
                coroutine.close()
                outcomes[name] = "suspended"
        return outcomes

    # The loops' own runs and timeouts, not anyio's: inside another library's task in
    # this thread, anyio would take the outer library for the running one.
    async def run_all() -> None:
        for name, call in FOREIGN_CALLS:
            try:
                if loop == "trio":
                    with trio.fail_after(10):
                        outcomes[name] = await call(cache)
                else:
                    async with asyncio.timeout(10):
                        outcomes[name] = await call(cache)
            except BaseException as error:  # the outcome is what the test looks at
                outcomes[name] = error

    if loop == "trio":
        trio.run(run_all)
    else:
        asyncio.run(run_all())
    return outcomes


def refusals(outcomes: dict[str, object]) -> dict[str, str]:
    """Each outcome as the test wants to see it: ``"refused"`` for a ``RuntimeError``
    that says the call came from a stranger, else what happened instead."""
    return {
        name: "refused"
        if type(outcome) is RuntimeError and "but this CacheStack belongs to" in str(outcome)
        else repr(outcome)
        for name, outcome in outcomes.items()
    }
