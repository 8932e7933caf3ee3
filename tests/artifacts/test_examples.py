"""Every example runs, and does what its text says, on every backend it supports.

Scripts run as subprocesses and are judged by their output and exit status. Each runs
once against the embedded Redis it starts by default (no URL given, and
``$LAYERCACHE_REDIS_URL`` removed from its environment) and once against a real
redis-server (the ``redis_url`` fixture, given as ``--redis-url`` or through the
variable). The FastAPI app is also driven in-process through its lifespan, on asyncio and
trio (Starlette runs on anyio). Nothing here waits a fixed time: a service is used once
it says it is listening, and every wait has a deadline.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import anyio
import pytest

from layercache.testing import EmbeddedRedis

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "examples"
URL_ENV = "LAYERCACHE_REDIS_URL"
RUN_TIMEOUT = 120.0
READY_TIMEOUT = 60.0


def _env(redis_url: str | None = None) -> dict[str, str]:
    """The environment for an example: unbuffered output, and a Redis URL only if given."""
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if redis_url is not None:
        env[URL_ENV] = redis_url
    return env


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=env if env is not None else _env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


class Background:
    """An example serving in a subprocess while the test talks to it.

    Threads collect its stdout and stderr line by line, so the test can wait, with a
    deadline, for the line that says it is ready.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._collect, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: Any) -> None:
        for line in stream:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first new output line matching ``pattern``; fails at the deadline or if
        the process closes its output first."""
        deadline = time.monotonic() + timeout
        closed = 0
        while closed < len(self._readers):
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if line is None:
                closed += 1
            elif match := re.search(pattern, line):
                return match
        pytest.fail(f"no output line matched {pattern!r}:\n{''.join(self.output)}")

    def interrupt(self) -> int:
        """Ctrl+C, then its exit status once it has shut down."""
        self.process.send_signal(signal.SIGINT)
        returncode = self.process.wait(timeout=RUN_TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=RUN_TIMEOUT)
        return returncode

    def __enter__(self) -> Background:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=RUN_TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            assert stream is not None
            stream.close()


# -- quickstart.py ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart(backend: str) -> None:
    out = _run("quickstart.py", backend)
    assert "100 concurrent callers, then one more: 1 query" in out
    assert "removed 2; left: ['article:43']" in out


# -- trio_service.py (trio only) -------------------------------------------------------


def _check_trio_service_script(out: str) -> None:
    assert "50 concurrent clients asked for article 1: 1 database query" in out
    assert "all 50 got the same article, titled 'Structured concurrency'" in out
    assert "AUTHOR 7 twice: 2 database queries" in out
    assert "PUT 1 then ARTICLE 1: 0 database queries; title='Structured concurrency, rev" in out
    assert "AUTHOR 7 after the PUT: 1 database query; ['Structured concurrency, revised'" in out
    assert "RENAME 7: invalidate_by_tag('author:7') removed 2 keys" in out
    assert "AUTHOR 7 after the rename: 2 database queries; name='Ada Lovelace'" in out
    # The restarted instance has a cold memory layer and finds the article in Redis.
    assert "after a restart, ARTICLE 1: 0 database queries (served by Redis)" in out
    assert "INVALIDATE articles: removed 2 keys" in out
    assert "ARTICLE 1 after that: 1 database query" in out
    assert "layer_hits={'memory': 4, 'redis': 0}" in out
    assert "layer_hits={'memory': 0, 'redis': 1}" in out


def test_trio_service_on_embedded_redis() -> None:
    out = _run("trio_service.py")
    assert "cache: memory + Redis at redis://127.0.0.1:" in out
    _check_trio_service_script(out)


def test_trio_service_on_redis_server_from_the_environment(redis_url: str) -> None:
    out = _run("trio_service.py", env=_env(redis_url))
    assert f"cache: memory + Redis at {redis_url}" in out
    _check_trio_service_script(out)


def test_trio_service_serves_until_interrupted(redis_url: str) -> None:
    args = [str(EXAMPLES / "trio_service.py"), "--serve", "--redis-url", redis_url]
    with Background(args, _env()) as service:
        port = int(service.wait_for(r"serving on 127\.0\.0\.1:(\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(b"ARTICLE 3\nARTICLE 3\nNOPE\nSTATS\n")
            replies = _receive_lines(connection, 4)
        assert replies[0] == replies[1] == '{"id": 3, "title": "Cancel scopes", "author": 9}'
        assert '"error": "unknown command' in replies[2]
        assert '"fetches": 1' in replies[3]
        assert '"database_queries": 1' in replies[3]
        assert service.interrupt() == 0, "".join(service.output)
    out = "".join(service.output)
    assert "SIGINT: shutting down" in out
    assert "cache statistics: hits=1 misses=1 fetches=1" in out
    assert "Traceback" not in out


def _receive_lines(connection: socket.socket, count: int) -> list[str]:
    data = b""
    while data.count(b"\n") < count:
        chunk = connection.recv(65536)
        assert chunk, f"the service hung up after {data!r}"
        data += chunk
    return data.decode().splitlines()


# -- two_process_invalidation.py -------------------------------------------------------


def _check_two_processes(out: str) -> None:
    lines = [line.strip() for line in out.splitlines()]
    for key, title in (("article:1", "Layers"), ("article:2", "Actors"), ("article:3", "Tags")):
        # B's first read comes from Redis, its second from its own memory layer.
        first = lines.index(f"B {key}: {{'title': '{title}'}} (served by redis)")
        assert lines[first + 1] == f"B {key}: {{'title': '{title}'}} (served by memory)"
    updated = lines.index("B article:1: {'title': 'Layers, revised'} (served by redis)")
    assert lines[updated - 1].startswith("A: set('article:1'")
    assert "A: invalidate_by_tag('author:7') removed 2 keys; B:" in lines
    reloaded = (
        "B article:2: {'title': \"article:2, loaded from B's database\"} (served by database)"
    )
    assert reloaded in lines
    deleted = lines.index("A: delete('article:3'); B:")
    assert lines[deleted + 1] == (
        "B article:3: {'title': \"article:3, loaded from B's database\"} (served by database)"
    )
    assert "'invalidations_received': 3, 'invalidations_rejected': 0" in out
    assert "OK: every change A made reached B's memory layer through the bus." in out
    assert "FAILED" not in out


@pytest.mark.parametrize(("backend", "peer_backend"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_two_processes_on_embedded_redis(backend: str, peer_backend: str) -> None:
    out = _run("two_process_invalidation.py", "--backend", backend, "--peer-backend", peer_backend)
    assert f"A ({backend}): memory + Redis at redis://127.0.0.1:" in out
    assert f"B ({peer_backend}) started" in out
    _check_two_processes(out)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_processes_on_redis_server(redis_url: str, backend: str) -> None:
    out = _run(
        "two_process_invalidation.py",
        *("--redis-url", redis_url, "--backend", backend, "--peer-backend", backend),
    )
    assert f"A ({backend}): memory + Redis at {redis_url}" in out
    _check_two_processes(out)


# -- fastapi_app.py --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fastapi_example() -> ModuleType:
    """examples/fastapi_app.py, imported (creating its module-level app does no I/O)."""
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look it up there)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["embedded", "redis-server"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A Redis URL: the embedded server's, or a real (flushed) redis-server's."""
    if request.param == "embedded":
        embedded: EmbeddedRedis = request.getfixturevalue("embedded_redis")
        return embedded.url
    url: str = request.getfixturevalue("redis_url")
    return url


AppClient = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture
def app_client(fastapi_example: ModuleType) -> AppClient:
    """``async with app_client(app) as client``: the app's lifespan runs around an httpx
    client that calls the app in-process."""
    import httpx
    from asgi_lifespan import LifespanManager

    @asynccontextmanager
    async def open_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://example"
            ) as client,
        ):
            yield client

    return open_client


async def _stats(client: Any) -> dict[str, Any]:
    response = await client.get("/stats")
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


@pytest.mark.anyio
async def test_fastapi_reads_through_the_cache(
    fastapi_example: ModuleType, app_client: AppClient, server_url: str
) -> None:
    async with app_client(fastapi_example.create_app(server_url)) as client:
        responses: list[Any] = []

        async def read() -> None:
            responses.append(await client.get("/articles/1"))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(read)
        assert {r.status_code for r in responses} == {200}
        assert all(r.json() == {"id": 1, "title": "Layers", "author": 7} for r in responses)
        stats = await _stats(client)
        assert stats["fetches"] == 1
        assert stats["database_queries"] == 1

        assert (await client.get("/articles/1")).status_code == 200
        assert (await client.get("/articles/99")).status_code == 404
        assert (await client.get("/articles/99")).status_code == 404  # None is cached
        stats = await _stats(client)
        assert stats["database_queries"] == 2
        assert stats["layer_hits"]["memory"] == 2
        assert {layer["name"] for layer in stats["layers"]} == {"memory", "redis"}


@pytest.mark.anyio
async def test_fastapi_writes_update_the_cache(
    fastapi_example: ModuleType, app_client: AppClient, server_url: str
) -> None:
    async with app_client(fastapi_example.create_app(server_url)) as client:
        assert (await client.get("/articles/1")).json()["title"] == "Layers"
        listing = await client.get("/authors/7/articles")
        assert [a["title"] for a in listing.json()] == ["Layers", "Actors"]
        queries = (await _stats(client))["database_queries"]
        assert queries == 2

        updated = await client.put("/articles/1", json={"title": "Layers, revised"})
        assert updated.json() == {"id": 1, "title": "Layers, revised", "author": 7}
        # cache.set wrote the new article through: no query to read it.
        assert (await client.get("/articles/1")).json()["title"] == "Layers, revised"
        assert (await _stats(client))["database_queries"] == queries
        # The author's list was dropped (cache.delete) and is rebuilt by one query.
        listing = await client.get("/authors/7/articles")
        assert [a["title"] for a in listing.json()] == ["Layers, revised", "Actors"]
        assert (await _stats(client))["database_queries"] == queries + 1

        created = await client.post("/articles", json={"title": "Bus", "author": 7})
        assert created.status_code == 201
        new_id = created.json()["id"]
        assert (await client.get(f"/articles/{new_id}")).json()["title"] == "Bus"
        listing = await client.get("/authors/7/articles")
        assert [a["title"] for a in listing.json()] == ["Layers, revised", "Actors", "Bus"]
        assert (await _stats(client))["database_queries"] == queries + 2

        assert (await client.delete("/articles/2")).status_code == 204
        assert (await client.get("/articles/2")).status_code == 404
        listing = await client.get("/authors/7/articles")
        assert [a["title"] for a in listing.json()] == ["Layers, revised", "Bus"]
        assert (await client.put("/articles/2", json={"title": "x"})).status_code == 404


@pytest.mark.anyio
async def test_fastapi_tag_invalidation(
    fastapi_example: ModuleType, app_client: AppClient, server_url: str
) -> None:
    async with app_client(fastapi_example.create_app(server_url)) as client:
        for path in ("/articles/1", "/articles/3", "/authors/7/articles", "/authors/9/articles"):
            assert (await client.get(path)).status_code == 200
        assert (await _stats(client))["database_queries"] == 4

        dropped = await client.post("/tags/author:7/invalidate")
        assert dropped.json() == {"tag": "author:7", "invalidated": 1}
        await client.get("/authors/7/articles")
        await client.get("/authors/9/articles")
        assert (await _stats(client))["database_queries"] == 5  # only author 7's list

        dropped = await client.post("/tags/articles/invalidate")
        assert dropped.json() == {"tag": "articles", "invalidated": 4}
        await client.get("/articles/1")
        assert (await _stats(client))["database_queries"] == 6


@pytest.mark.anyio
async def test_fastapi_instances_share_the_redis_layer(
    fastapi_example: ModuleType, app_client: AppClient, server_url: str
) -> None:
    async with app_client(fastapi_example.create_app(server_url)) as client:
        assert (await client.put("/articles/3", json={"title": "Tags, revised"})).is_success
    # A second instance (say, after a deploy) starts with an empty memory layer.
    async with app_client(fastapi_example.create_app(server_url)) as client:
        assert (await client.get("/articles/3")).json()["title"] == "Tags, revised"
        stats = await _stats(client)
        assert stats["database_queries"] == 0
        assert stats["layer_hits"] == {"memory": 0, "redis": 1}


@pytest.mark.anyio
async def test_fastapi_module_app_starts_its_own_embedded_redis(
    fastapi_example: ModuleType, app_client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    async with app_client(fastapi_example.app) as client:
        assert (await client.get("/articles/2")).json()["title"] == "Actors"
        assert (await _stats(client))["layers"][1]["state"] == "healthy"


def test_fastapi_app_served_by_uvicorn(redis_url: str) -> None:
    import httpx

    args = [str(EXAMPLES / "fastapi_app.py"), "--port", "0", "--redis-url", redis_url]
    with Background(args, _env()) as server:
        base = server.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")[1]

        async def burst() -> list[Any]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                replies: list[Any] = []

                async def read() -> None:
                    replies.append((await client.get("/articles/3")).json())

                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(read)
                replies.append((await client.get("/stats")).json())
                return replies

        *articles, stats = anyio.run(burst)
        assert articles == [{"id": 3, "title": "Tags", "author": 9}] * 20
        assert stats["fetches"] == 1
        assert stats["database_queries"] == 1
        assert server.interrupt() == 0, "".join(server.output)
    out = "".join(server.output)
    assert f"cache: memory + Redis at {redis_url}" in out
    assert "Application shutdown complete" in out
    assert "Traceback" not in out
