"""Incident 4, TTL as the only invalidation tool: a whole group of keys goes stale.

Author 7's articles are cached on instance A and read on instance B (so they sit in
both L1s and in Redis), then author 7 changes their name in the database. Without tags
nobody knows which keys to delete: every read on A and B serves the old name until the
entries expire. With ``tags=["author:7"]`` on the entries, one
``invalidate_by_tag("author:7")`` on A removes them from Redis and from A's L1, and the
invalidation bus removes them from B's L1: the next reads fetch the new name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from .._redis_layer import RedisLayer
from .._stack import CacheStack
from ._report import Result, duration, poll_until, say
from ._stacks import clear_prefix, instance, new_prefix

ARTICLES = 100
ARTICLE_KEYS = tuple(f"article:{n}" for n in range(ARTICLES))
TAG = "author:7"
DEADLINE = 5.0
"""Seconds B may take to drop the tagged entries before the scenario fails."""


@dataclass(frozen=True, slots=True)
class TagFigures:
    articles: int
    stale_without_tags: tuple[int, int]
    """Stale reads on A and on B after the change, without tags."""
    ttl_left: float | None
    """Seconds the stale entries still had to live in Redis (None: not found there)."""
    removed: int
    """What ``invalidate_by_tag`` on A reported removing."""
    gone_after: float | None
    """Seconds from the start of ``invalidate_by_tag`` on A until B found none of the
    articles; None: not within DEADLINE."""
    stale_with_tags: tuple[int, int]

    def result(self) -> Result:
        problems: list[str] = []
        reads = 2 * self.articles
        stale_before, stale_after = sum(self.stale_without_tags), sum(self.stale_with_tags)
        if stale_before != reads or not self.ttl_left:
            problems.append(
                f"without tags {stale_before}/{reads} reads were stale: the incident was not "
                "reproduced"
            )
        if self.removed != self.articles:
            problems.append(
                f"invalidate_by_tag removed {self.removed} keys, expected {self.articles}"
            )
        if self.gone_after is None:
            problems.append(f"B still held the articles {duration(DEADLINE)} after the call")
        if stale_after:
            a, b = self.stale_with_tags
            problems.append(f"with tags {a} reads on A and {b} on B were still stale")
        ttl = "" if self.ttl_left is None else f", TTL {duration(self.ttl_left)}"
        removed = f"{self.removed} keys gone"
        if self.gone_after is not None:
            removed += f" in {duration(self.gone_after)}"
        return Result(
            "4 tag invalidation",
            f"{stale_before}/{reads} reads stale{ttl}",
            f"{stale_after}/{reads} stale, {removed}",
            tuple(problems),
        )


class Database:
    """Author 7's articles, and the author's name as the database has it now."""

    def __init__(self) -> None:
        self.author = "Ann"

    def article(self, key: str) -> dict[str, str]:
        return {"id": key, "author": self.author}


async def tag_invalidation(redis_url: str) -> Result:
    say(
        f"[4/6] Tag invalidation: {ARTICLES} articles by {TAG} cached on A and read on B, "
        "then the author's"
    )
    say("      name changes (both instances on the invalidation bus)")
    stale_without, ttl_left = await _without_tags(redis_url)
    ttl = "" if ttl_left is None else f", for {duration(ttl_left)} more (their TTL)"
    say(
        f"      without tags: {stale_without[0]}/{ARTICLES} reads on A and "
        f"{stale_without[1]}/{ARTICLES} on B stale{ttl}"
    )
    removed, called, gone_after, stale_with = await _with_tags(redis_url)
    delivered = (
        f"still on B after {duration(DEADLINE)}"
        if gone_after is None
        else f"gone from B after {duration(gone_after)}"
    )
    say(
        f"      with tags: invalidate_by_tag({TAG!r}) on A removed {removed} keys in "
        f"{duration(called)}, {delivered};"
    )
    say(
        f"      then {stale_with[0]}/{ARTICLES} reads on A and "
        f"{stale_with[1]}/{ARTICLES} on B stale"
    )
    return TagFigures(ARTICLES, stale_without, ttl_left, removed, gone_after, stale_with).result()


async def _without_tags(redis_url: str) -> tuple[tuple[int, int], float | None]:
    """Stale reads on A and B after the change, and the TTL the entries have left."""
    prefix = new_prefix("untagged")
    try:
        async with (
            instance(redis_url, prefix, bus=True) as a,
            instance(redis_url, prefix, bus=True) as b,
        ):
            database = Database()
            for cache in (a, b):
                await _read_all(cache, database, tags=())
            database.author = "Ann Smith"  # and nothing says which keys that changes
            stale = (
                await _read_all(a, database, tags=()),
                await _read_all(b, database, tags=()),
            )
            return stale, await _redis_ttl_left(a, ARTICLE_KEYS[0])
    finally:
        await clear_prefix(redis_url, prefix)


async def _with_tags(redis_url: str) -> tuple[int, float, float | None, tuple[int, int]]:
    """What ``invalidate_by_tag`` removed, how long it took, how long until B held none
    of the articles, and the stale reads on A and B after it."""
    prefix = new_prefix("tagged")
    try:
        async with (
            instance(redis_url, prefix, bus=True) as a,
            instance(redis_url, prefix, bus=True) as b,
        ):
            database = Database()
            for cache in (a, b):
                await _read_all(cache, database, tags=(TAG,))
            database.author = "Ann Smith"

            async def b_has_none() -> bool:
                return not await b.get_many(ARTICLE_KEYS)

            started = time.perf_counter()
            removed = await a.invalidate_by_tag(TAG)
            called = time.perf_counter() - started
            waited = await poll_until(b_has_none, DEADLINE)
            gone_after = None if waited is None else time.perf_counter() - started
            stale = (
                await _read_all(a, database, tags=(TAG,)),
                await _read_all(b, database, tags=(TAG,)),
            )
            return removed, called, gone_after, stale
    finally:
        await clear_prefix(redis_url, prefix)


async def _read_all(cache: CacheStack, database: Database, *, tags: Sequence[str]) -> int:
    """Read every article through the cache at once; return how many were stale."""
    stale = 0

    async def read(key: str) -> None:
        nonlocal stale

        async def fetch() -> dict[str, str]:
            return database.article(key)

        article = await cache.get(key, fetch, tags=tags)
        stale += article != database.article(key)

    async with anyio.create_task_group() as readers:
        for key in ARTICLE_KEYS:
            readers.start_soon(read, key)
    return stale


async def _redis_ttl_left(cache: CacheStack, key: str) -> float | None:
    """Seconds ``key`` has left in the stack's Redis layer, as Redis reports it."""
    (redis,) = (layer for layer in cache.layers if isinstance(layer, RedisLayer))
    hit = (await redis.get_many([key])).get(key)
    return None if hit is None else hit.remaining(redis.clock())
