"""A FastAPI app with a memory + Redis cache opened in its lifespan.

Run it (after ``pip install -e '.[examples]'``, from the repository root)::

    python examples/fastapi_app.py                      # embedded Redis, port 8000
    python examples/fastapi_app.py --redis-url redis://localhost:6379/0 --port 8000
    LAYERCACHE_REDIS_URL=redis://localhost:6379/0 uvicorn --app-dir examples fastapi_app:app

then, from another shell::

    curl localhost:8000/articles/1                      # a database query, then cache hits
    curl localhost:8000/authors/7/articles              # cached, tagged "author:7"
    curl -X POST localhost:8000/tags/author:7/invalidate   # "invalidated": 1 (the list)
    curl localhost:8000/authors/7/articles              # a database query again
    curl -X PUT localhost:8000/articles/1 -H 'content-type: application/json' \\
         -d '{"title": "Layers, revised"}'              # database, then cache.set
    curl -X DELETE localhost:8000/articles/2            # database, then cache.delete
    curl localhost:8000/stats                           # hits, misses, database queries

Without a URL (``--redis-url`` or ``$LAYERCACHE_REDIS_URL``) the lifespan starts an
embedded Redis-protocol server for the app's lifetime. The stack is opened in the
lifespan, so its actors start before the first request and stop after the last one;
endpoints reach it through a dependency. ``tests/artifacts/test_examples.py`` imports
:func:`create_app` and drives it in-process, on asyncio and trio, with an
``httpx.AsyncClient`` over ``httpx.ASGITransport`` inside asgi-lifespan's
``LifespanManager`` (which runs the lifespan); it also serves the app with uvicorn.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from layercache import (
    CacheStack,
    CacheStatistics,
    GracefulDegradation,
    MemoryLayer,
    RedisLayer,
)
from layercache.testing import EmbeddedRedis


class Article(BaseModel):
    id: int
    title: str
    author: int


class NewArticle(BaseModel):
    title: str
    author: int


class ArticleUpdate(BaseModel):
    title: str


@dataclass
class Database:
    """A stand-in for a slow database: counts its queries."""

    latency: float = 0.02
    queries: int = 0
    articles: dict[int, Article] = field(
        default_factory=lambda: {
            1: Article(id=1, title="Layers", author=7),
            2: Article(id=2, title="Actors", author=7),
            3: Article(id=3, title="Tags", author=9),
        }
    )

    async def _query(self) -> None:
        self.queries += 1
        await anyio.sleep(self.latency)

    async def article(self, article_id: int) -> dict[str, Any] | None:
        await self._query()
        article = self.articles.get(article_id)
        return None if article is None else article.model_dump()

    async def articles_by(self, author: int) -> list[dict[str, Any]]:
        await self._query()
        return [a.model_dump() for a in self.articles.values() if a.author == author]


# Cache keys and tags in one place, so writers invalidate exactly what readers cached.
def article_key(article_id: int) -> str:
    return f"article:{article_id}"


def author_articles_key(author: int) -> str:
    return f"author:{author}:articles"


# Everything derived from articles carries "articles"; an author's list also carries
# the author's tag, so POST /tags/author:7/invalidate drops what is cached about author 7.
ARTICLE_TAGS = ("articles",)


def author_tags(author: int) -> tuple[str, ...]:
    return ("articles", f"author:{author}")


async def get_cache(request: Request) -> CacheStack:
    cache: CacheStack = request.app.state.cache
    return cache


async def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


Cache = Annotated[CacheStack, Depends(get_cache)]
Db = Annotated[Database, Depends(get_database)]

router = APIRouter()


@router.get("/articles/{article_id}")
async def read_article(article_id: int, cache: Cache, db: Db) -> Article:
    # A missing article is cached too (as None): a flood of requests for an id that does
    # not exist costs one query, and creating it overwrites the entry.
    found = await cache.get(
        article_key(article_id), lambda: db.article(article_id), tags=ARTICLE_TAGS
    )
    if found is None:
        raise HTTPException(status_code=404, detail="no such article")
    return Article.model_validate(found)


@router.get("/authors/{author}/articles")
async def read_author_articles(author: int, cache: Cache, db: Db) -> list[Article]:
    found = await cache.get(
        author_articles_key(author), lambda: db.articles_by(author), tags=author_tags(author)
    )
    return [Article.model_validate(a) for a in found]


@router.post("/articles", status_code=201)
async def create_article(new: NewArticle, cache: Cache, db: Db) -> Article:
    article = Article(id=max(db.articles, default=0) + 1, **new.model_dump())
    db.articles[article.id] = article
    await cache.set(article_key(article.id), article.model_dump(), tags=ARTICLE_TAGS)
    await cache.delete(author_articles_key(article.author))
    return article


@router.put("/articles/{article_id}")
async def update_article(article_id: int, update: ArticleUpdate, cache: Cache, db: Db) -> Article:
    article = db.articles.get(article_id)
    if article is None:
        raise HTTPException(status_code=404, detail="no such article")
    article = article.model_copy(update={"title": update.title})
    db.articles[article_id] = article  # the database first, then the cache
    # Write-through for the article itself; the author's list is derived: drop it.
    await cache.set(article_key(article_id), article.model_dump(), tags=ARTICLE_TAGS)
    await cache.delete(author_articles_key(article.author))
    return article


@router.delete("/articles/{article_id}", status_code=204)
async def delete_article(article_id: int, cache: Cache, db: Db) -> None:
    article = db.articles.pop(article_id, None)
    if article is None:
        raise HTTPException(status_code=404, detail="no such article")
    await cache.delete_many([article_key(article_id), author_articles_key(article.author)])


@router.post("/tags/{tag}/invalidate")
async def invalidate_tag(tag: str, cache: Cache) -> dict[str, Any]:
    return {"tag": tag, "invalidated": await cache.invalidate_by_tag(tag)}


@router.get("/stats")
async def stats(cache: Cache, db: Db) -> dict[str, Any]:
    return {**statistics_json(cache.statistics()), "database_queries": db.queries}


def statistics_json(stats: CacheStatistics) -> dict[str, Any]:
    return {
        "hits": stats.hits,
        "misses": stats.misses,
        "fetches": stats.fetches,
        "fetch_errors": stats.fetch_errors,
        "layer_hits": dict(stats.layer_hits),
        "loads_in_flight": stats.loads_in_flight,
        "layers": [asdict(layer) for layer in stats.layers],
    }


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The Redis to use: ``url``, else ``$LAYERCACHE_REDIS_URL``, else an embedded one."""
    url = url or os.environ.get("LAYERCACHE_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def create_app(redis_url: str | None = None, *, prefix: str = "fastapi-example:") -> FastAPI:
    """The app; its lifespan opens the cache on ``redis_url`` (see :func:`redis_server`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with redis_server(redis_url) as url:
            layers = [
                MemoryLayer(ttl=60, max_size=10_000),
                RedisLayer(url=url, ttl=3600, prefix=prefix),
            ]
            # Graceful degradation: with Redis down, requests skip it and reach the
            # database instead of failing.
            async with CacheStack(layers, graceful_degradation=GracefulDegradation()) as cache:
                print(f"cache: memory + Redis at {url}", flush=True)
                app.state.cache = cache
                app.state.db = Database()
                yield
                # The app is done serving; the stack stops here, the server after it.

    app = FastAPI(title="layercache FastAPI example", lifespan=lifespan)
    app.include_router(router)
    return app


# For `uvicorn --app-dir examples fastapi_app:app`; creating it does no I/O.
app = create_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="default: $LAYERCACHE_REDIS_URL or embedded")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    uvicorn.run(create_app(args.redis_url), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
