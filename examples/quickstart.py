"""The README's first example, runnable: ``python examples/quickstart.py [asyncio|trio]``.

A product listing behind a memory layer: the first call fetches, the next ones hit,
and a tag invalidation drops a group of entries at once; it ends with a few statistics.
"""

from __future__ import annotations

import sys

import anyio

from layercache import CacheStack, MemoryLayer

queries = 0


async def fetch_listing() -> list[str]:
    global queries
    queries += 1
    await anyio.sleep(0.01)  # the database
    return [f"product:{n}" for n in range(3)]


async def main() -> None:
    async with CacheStack([MemoryLayer(ttl=60, max_size=10_000)]) as cache:
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(cache.get, "products:listing", fetch_listing)
        listing = await cache.get("products:listing", fetch_listing)
        print(f"100 concurrent callers, then one more: {queries} query, listing={listing}")

        await cache.set("article:41", {"title": "Tags"}, tags=["articles", "author:7"])
        await cache.set("article:42", {"title": "Layers"}, tags=["articles", "author:7"])
        await cache.set("article:43", {"title": "Actors"}, tags=["articles", "author:9"])
        removed = await cache.invalidate_by_tag("author:7")
        left = await cache.get_many(["article:41", "article:42", "article:43"])
        print(f"invalidate_by_tag('author:7') removed {removed}; left: {sorted(left)}")

        # statistics() is a frozen snapshot of the counters; a few of them. Far fewer
        # fetches than misses is single-flight at work: the 100 concurrent misses shared
        # one fetch (the other misses are the two keys get_many no longer found).
        stats = cache.statistics()
        print(f"statistics: hits={stats.hits} misses={stats.misses} fetches={stats.fetches}")
        for layer in stats.layers:
            print(
                f"  layer {layer.name}: {layer.size} entries (at most {layer.max_size}), "
                f"writes={layer.writes} deletes={layer.deletes}"
            )


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
