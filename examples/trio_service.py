"""A trio TCP service with a memory + Redis cache in front of a slow database.

Run it (after ``pip install -e '.[examples]'``, from the repository root)::

    python examples/trio_service.py                     # embedded Redis, scripted clients
    python examples/trio_service.py --redis-url redis://localhost:6379/0
    LAYERCACHE_REDIS_URL=redis://localhost:6379/0 python examples/trio_service.py
    python examples/trio_service.py --serve --port 8765 # then: nc 127.0.0.1 8765

Without a URL (``--redis-url`` or ``$LAYERCACHE_REDIS_URL``) it starts an embedded
Redis-protocol server in this process. By default it serves on a free port, runs a few
scripted clients against itself, prints what the database saw and the cache statistics,
and exits; ``--serve`` keeps serving until Ctrl+C (or SIGTERM), then prints the
statistics.

The protocol is one command per line, one JSON reply per line::

    ARTICLE <id>            an article, read through the cache
    AUTHOR <id>             an author's profile and article titles, read through the cache
    PUT <id> <title...>     change an article's title: database, then cache.set / delete
    RENAME <id> <name...>   rename an author: database, then invalidate_by_tag("author:<id>")
    INVALIDATE <tag>        drop every cached entry carrying the tag
    STATS                   the cache's counters

The shape is the idiomatic trio one: the cache stack is opened around the nursery that
runs the listener and every connection handler, so when the nursery is done (or
cancelled) nothing of the cache or the server is left running.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from layercache import (
    CacheError,
    CacheStack,
    CacheStatistics,
    GracefulDegradation,
    MemoryLayer,
    RedisLayer,
)
from layercache.testing import EmbeddedRedis

MAX_LINE = 4096
REQUEST_TIMEOUT = 10.0  # seconds a scripted client waits for a reply


@dataclass
class Database:
    """A stand-in for a slow database: counts its queries."""

    latency: float = 0.02
    queries: int = 0
    authors: dict[int, str] = field(default_factory=lambda: {7: "Ada", 9: "Grace"})
    articles: dict[int, dict[str, Any]] = field(
        default_factory=lambda: {
            1: {"id": 1, "title": "Structured concurrency", "author": 7},
            2: {"id": 2, "title": "Nurseries", "author": 7},
            3: {"id": 3, "title": "Cancel scopes", "author": 9},
        }
    )

    async def _query(self) -> None:
        self.queries += 1
        await trio.sleep(self.latency)

    async def article(self, article_id: int) -> dict[str, Any] | None:
        await self._query()
        article = self.articles.get(article_id)
        return None if article is None else dict(article)

    async def author(self, author_id: int) -> dict[str, Any] | None:
        await self._query()
        name = self.authors.get(author_id)
        return None if name is None else {"id": author_id, "name": name}

    async def titles_by(self, author_id: int) -> list[str]:
        await self._query()
        return [a["title"] for a in self.articles.values() if a["author"] == author_id]


class Service:
    """The request handlers: every read goes through the cache, every write updates the
    database first and then the cache."""

    def __init__(self, cache: CacheStack, db: Database) -> None:
        self.cache = cache
        self.db = db
        self._commands: dict[str, Callable[[str], Awaitable[object]]] = {
            "ARTICLE": self.article,
            "AUTHOR": self.author,
            "PUT": self.put_article,
            "RENAME": self.rename_author,
            "INVALIDATE": self.invalidate,
            "STATS": self.stats,
        }

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one client: a reply line for every request line, until it hangs up."""
        # An exception escaping a handler would cancel serve_tcp's whole nursery: one
        # client's trouble must stay with that client.
        async with stream:
            lines = LineStream(stream)
            try:
                while (line := await lines.receive_line()) is not None:
                    await lines.send_line(json.dumps(await self.dispatch(line)))
            except trio.BrokenResourceError:
                pass  # the client went away

    async def dispatch(self, line: str) -> object:
        command, _, argument = line.strip().partition(" ")
        handler = self._commands.get(command.upper())
        if handler is None:
            return {"error": f"unknown command {command!r}", "commands": sorted(self._commands)}
        try:
            return await handler(argument.strip())
        except (ValueError, CacheError) as error:  # bad input; a value the cache refused
            return {"error": f"{type(error).__name__}: {error}"}

    async def article(self, argument: str) -> object:
        article_id = int(argument)
        # Tagged "articles" so INVALIDATE articles drops them all at once.
        return await self.cache.get(
            f"article:{article_id}", lambda: self.db.article(article_id), tags=["articles"]
        )

    async def author(self, argument: str) -> object:
        author_id = int(argument)
        # Both views of an author carry the author's tag: RENAME drops them together.
        tag = f"author:{author_id}"
        profile = await self.cache.get(
            f"author:{author_id}:profile", lambda: self.db.author(author_id), tags=[tag]
        )
        titles = await self.cache.get(
            f"author:{author_id}:titles",
            lambda: self.db.titles_by(author_id),
            tags=["articles", tag],
        )
        return {"profile": profile, "titles": titles}

    async def put_article(self, argument: str) -> object:
        raw_id, _, title = argument.partition(" ")
        article = self.db.articles.get(int(raw_id))
        if article is None or not title:
            return {"error": "usage: PUT <existing article id> <title>"}
        article["title"] = title  # the database write
        # Write-through: readers get the new article without a query; the author's list
        # of titles is derived data, so it is dropped and rebuilt on the next read.
        await self.cache.set(f"article:{article['id']}", dict(article), tags=["articles"])
        await self.cache.delete(f"author:{article['author']}:titles")
        return article

    async def rename_author(self, argument: str) -> object:
        raw_id, _, name = argument.partition(" ")
        author_id = int(raw_id)
        if author_id not in self.db.authors or not name:
            return {"error": "usage: RENAME <existing author id> <name>"}
        self.db.authors[author_id] = name
        removed = await self.cache.invalidate_by_tag(f"author:{author_id}")
        return {"id": author_id, "name": name, "invalidated": removed}

    async def invalidate(self, argument: str) -> object:
        if not argument:
            return {"error": "usage: INVALIDATE <tag>"}
        return {"tag": argument, "invalidated": await self.cache.invalidate_by_tag(argument)}

    async def stats(self, argument: str) -> object:
        s = self.cache.statistics()
        return {
            "hits": s.hits,
            "misses": s.misses,
            "fetches": s.fetches,
            "layer_hits": dict(s.layer_hits),
            "database_queries": self.db.queries,
        }


class LineStream:
    """Lines of text over a byte stream, for the service and its clients alike."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send_line(self, line: str) -> None:
        await self.stream.send_all(line.encode() + b"\n")

    async def receive_line(self) -> str | None:
        """The next line, or None once the peer hangs up (or sends an endless line)."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                return None
            data = await self.stream.receive_some(MAX_LINE)
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Callable[[str], Awaitable[Any]]]:
    """A client connection; yields ``request(line) -> decoded JSON reply``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        lines = LineStream(stream)

        async def request(line: str) -> Any:
            with trio.fail_after(REQUEST_TIMEOUT):
                await lines.send_line(line)
                reply = await lines.receive_line()
            if reply is None:
                raise ConnectionError("the service hung up")
            return json.loads(reply)

        yield request


Script = Callable[[CacheStack, int], Awaitable[None]]


async def run_instance(
    redis_url: str,
    db: Database,
    *,
    prefix: str,
    port: int = 0,
    script: Script | None = None,
    name: str = "service",
) -> CacheStatistics:
    """One instance of the service: serve until ``script(cache, port)`` is done, or
    without a script until SIGINT/SIGTERM. Returns the cache's final statistics."""
    layers = [
        MemoryLayer(ttl=60, max_size=10_000),
        RedisLayer(url=redis_url, ttl=3600, prefix=prefix),
    ]
    # Graceful degradation: with Redis down, requests skip it and reach the database.
    # The stack is opened around the nursery: its actors outlive every handler, and
    # the nursery (the listener, every connection) is done before the stack closes.
    async with CacheStack(layers, graceful_degradation=GracefulDegradation()) as cache:
        service = Service(cache, db)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, service.handle_connection, port, host="127.0.0.1")
            )
            bound = listeners[0].socket.getsockname()[1]
            serving = f"{name} serving on 127.0.0.1:{bound}, cache: memory + Redis at {redis_url}"
            if script is None:
                await _until_interrupted(serving)
            else:
                print(serving)
                await script(cache, bound)
            nursery.cancel_scope.cancel()  # stop the listener and every connection
        return cache.statistics()


async def _until_interrupted(ready_message: str) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        print(ready_message, flush=True)  # once Ctrl+C means "shut down cleanly"
        async for signum in signals:
            print(f"{signal.Signals(signum).name}: shutting down")
            return


async def scripted_run(redis_url: str, prefix: str) -> None:
    """Clients against one instance, then against a restarted one (a cold memory layer,
    the same Redis), printing what they saw and what it cost the database."""
    db = Database()

    async def first_instance(cache: CacheStack, port: int) -> None:
        await cache.clear()  # start cold, so the figures are the same on every run

        replies: list[Any] = []

        async def one_client() -> None:
            async with connect(port) as request:
                replies.append(await request("ARTICLE 1"))

        before = db.queries
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one_client)
        titles = sorted({reply["title"] for reply in replies})
        print(f"50 concurrent clients asked for article 1: {db.queries - before} database query")
        if len(titles) == 1:
            print(f"  all {len(replies)} got the same article, titled {titles[0]!r}")
        else:
            print(f"  they got {len(titles)} different titles: {', '.join(map(repr, titles))}")

        async with connect(port) as request:
            # AUTHOR reads two entries, the profile and the titles: a cold read costs two
            # queries, a warm one none.
            before = db.queries
            first = await request("AUTHOR 7")
            cold = db.queries - before
            await request("AUTHOR 7")
            warm = db.queries - before - cold
            print(
                f"AUTHOR 7 twice: {cold + warm} database queries (first request: {cold}, "
                f"profile + titles; second: {warm}, served from the cache)"
            )
            print(f"  reply: {first}")

            before = db.queries
            await request("PUT 1 Structured concurrency, revised")
            article = await request("ARTICLE 1")
            print(
                f"PUT 1 then ARTICLE 1: {db.queries - before} database queries; "
                f"title={article['title']!r}"
            )
            before = db.queries
            author = await request("AUTHOR 7")
            titles_now = author["titles"]
            print(f"AUTHOR 7 after the PUT: {db.queries - before} database query; {titles_now}")

            renamed = await request("RENAME 7 Ada Lovelace")
            print(f"RENAME 7: invalidate_by_tag('author:7') removed {renamed['invalidated']} keys")
            before = db.queries
            author = await request("AUTHOR 7")
            print(
                f"AUTHOR 7 after the rename: {db.queries - before} database queries; "
                f"name={author['profile']['name']!r}"
            )
            print(f"STATS: {await request('STATS')}")

    async def restarted_instance(cache: CacheStack, port: int) -> None:
        async with connect(port) as request:
            before = db.queries
            article = await request("ARTICLE 1")
            queries = db.queries - before
            print(
                f"after a restart, ARTICLE 1: {queries} database queries "
                f"(served by {'the database' if queries else 'Redis'}); title={article['title']!r}"
            )
            dropped = await request("INVALIDATE articles")
            print(f"INVALIDATE articles: removed {dropped['invalidated']} keys")
            before = db.queries
            await request("ARTICLE 1")
            print(f"ARTICLE 1 after that: {db.queries - before} database query")
            print(f"STATS: {await request('STATS')}")
        await cache.clear()  # leave nothing behind in a real Redis

    stats = await run_instance(redis_url, db, prefix=prefix, script=first_instance)
    print_statistics(stats)
    print()
    stats = await run_instance(
        redis_url, db, prefix=prefix, script=restarted_instance, name="restarted service"
    )
    print_statistics(stats)


def print_statistics(stats: CacheStatistics) -> None:
    print(f"cache statistics: hits={stats.hits} misses={stats.misses} fetches={stats.fetches}")
    print(f"  layer_hits={dict(stats.layer_hits)}")
    for layer in stats.layers:
        print(
            f"  {layer.name}: hits={layer.hits} misses={layer.misses} writes={layer.writes} "
            f"deletes={layer.deletes} errors={layer.errors}"
        )


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The Redis to use: ``url``, else ``$LAYERCACHE_REDIS_URL``, else an embedded one."""
    url = url or os.environ.get("LAYERCACHE_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="default: $LAYERCACHE_REDIS_URL or embedded")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl+C")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--prefix", default="trio-service-example:", help="Redis key prefix")
    args = parser.parse_args()
    with redis_server(args.redis_url) as url:
        if args.serve:
            db = Database()
            print_statistics(
                trio.run(lambda: run_instance(url, db, prefix=args.prefix, port=args.port))
            )
        else:
            trio.run(scripted_run, url, args.prefix)


if __name__ == "__main__":
    main()
