"""Shared fixtures: real Postgres and Redis servers on free ports, and the API served by uvicorn over real HTTP."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from diagnostics import MARGIN_SECONDS, print_await_chains
from harness import JWT_SECRET, Api, serve_api
from servers import PostgresServer, RedisServer

from edge_api.settings import ApiSettings
from jobs.migrations import apply_migrations
from jobs.webhooks import new_secret

__all__ = ["JWT_SECRET", "Api", "serve_api"]
TEMPLATE_DB = "ourvidz_template"


@pytest.fixture(autouse=True)
async def _await_chains_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test that hangs shows where every task of the (shared) event loop waits, not only the threads'
    stacks that pytest-timeout prints, which for an asyncio test are one idle `select`."""
    marker = request.node.get_closest_marker("timeout")
    configured = request.config.getoption("timeout", None) or request.config.getini("timeout") or 0
    timeout = float(marker.args[0]) if marker and marker.args else float(configured)
    handle = None
    if timeout > MARGIN_SECONDS:
        handle = asyncio.get_running_loop().call_later(timeout - MARGIN_SECONDS, print_await_chains,
                                                       request.node.nodeid)
    yield
    if handle is not None:
        handle.cancel()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp dir: that is private to root, and Postgres runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="ourvidz-pg-"))
    server = PostgresServer(root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_template(pg_server: PostgresServer) -> str:
    conn = await asyncpg.connect(pg_server.url)
    await conn.execute(f"create database {TEMPLATE_DB}")
    await conn.close()
    url = pg_server.url.rsplit("/", 1)[0] + f"/{TEMPLATE_DB}"
    await apply_migrations(url)
    return url


class FreshDatabases:
    """Copies of the migrated template, made ahead of need.

    A copy takes about 0.3 s, most of it Postgres waiting rather than working, so a few are made in the
    background while tests run and each test takes one that is ready.
    """

    def __init__(self, server_url: str, ahead: int = 3) -> None:
        self._server_url = server_url
        self._ahead = ahead
        self._ready: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self._making: set[asyncio.Task[None]] = set()

    def url(self, name: str) -> str:
        return self._server_url.rsplit("/", 1)[0] + f"/{name}"

    async def take(self) -> str:
        """The name of a fresh database that nobody else uses."""
        self._refill()
        ready = await self._ready.get()
        self._refill()
        if isinstance(ready, BaseException):
            raise ready
        return ready

    async def drop(self, name: str) -> None:
        conn = await asyncpg.connect(self._server_url)
        try:
            await conn.execute(f"drop database if exists {name} with (force)")
        finally:
            await conn.close()

    async def aclose(self) -> None:
        for task in list(self._making):
            await task
        while not self._ready.empty():
            ready = self._ready.get_nowait()
            if isinstance(ready, str):
                await self.drop(ready)

    def _refill(self) -> None:
        while len(self._making) + self._ready.qsize() < self._ahead:
            task = asyncio.create_task(self._make())
            self._making.add(task)
            task.add_done_callback(self._making.discard)

    async def _make(self) -> None:
        name = f"t_{uuid.uuid4().hex[:16]}"
        try:
            conn = await asyncpg.connect(self._server_url)
            try:
                await conn.execute(f"create database {name} template {TEMPLATE_DB}")
            finally:
                await conn.close()
        except Exception as exc:  # handed to the test that takes it
            self._ready.put_nowait(exc)
        else:
            self._ready.put_nowait(name)


@pytest.fixture(scope="session")
async def fresh_databases(pg_server: PostgresServer, pg_template: str) -> AsyncIterator[FreshDatabases]:
    # Nothing may stay connected to the template: Postgres refuses to copy a database in use.
    databases = FreshDatabases(pg_server.url)
    yield databases
    await databases.aclose()


@pytest.fixture
async def postgres_url(fresh_databases: FreshDatabases) -> AsyncIterator[str]:
    """A fresh database with the migrations applied, for one test."""
    name = await fresh_databases.take()
    yield fresh_databases.url(name)
    await fresh_databases.drop(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    import redis.asyncio as aioredis

    if redis_server.process is None:  # a test stopped it
        redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    return redis_server.url


def make_settings(database_url: str, redis_url: str, storage_dir: Path) -> ApiSettings:
    return ApiSettings(
        database_url=database_url, redis_url=redis_url, jwt_secret=JWT_SECRET, callback_secret=new_secret(),
        storage="local", storage_dir=storage_dir, files_secret="files-secret-for-tests",
        starting_credits=0, sweeper_enabled=False, outbox_grace_seconds=0,
        # The fair-use limits and the fair order are off unless a test is about them (test_active_job_caps.py,
        # test_rate_limits.py, test_fair_order.py, and the fault suite's settings).
        user_active_jobs={}, rate_limit_submits=0, rate_limit_requests=0, rate_limit_anonymous=0,
        fair_lookahead=0,
    )


@pytest.fixture
def api_settings(postgres_url: str, redis_url: str, tmp_path: Path) -> ApiSettings:
    """Production-shaped settings (Postgres, Redis); tests change fields with `model_copy(update=...)`."""
    return make_settings(postgres_url, redis_url, tmp_path / "storage")


@pytest.fixture
async def api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async for harness in serve_api(api_settings):
        yield harness


@pytest.fixture(scope="module")
async def shared_settings(fresh_databases: FreshDatabases, redis_server: RedisServer,
                          tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiSettings]:
    """Settings with a database of the module's own, kept for all its tests (Redis is not flushed for it)."""
    if redis_server.process is None:
        redis_server.start()
    name = await fresh_databases.take()
    yield make_settings(fresh_databases.url(name), redis_server.url, tmp_path_factory.mktemp("storage"))
    await fresh_databases.drop(name)


@pytest.fixture(scope="module")
async def shared_api(shared_settings: ApiSettings) -> AsyncIterator[Api]:
    """One API for the tests of a module whose every check is about their own user or job ids: they
    need no server and database of their own (tests that read a queue, a count or the sweeper do)."""
    async for harness in serve_api(shared_settings):
        yield harness


@pytest.fixture
def user() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight checkpoints in the real layouts, built once per session (seconds on a CPU)."""
    from models.checkpoints import build_all

    root = tmp_path_factory.mktemp("checkpoints")
    build_all(root, "tiny")
    return root


@pytest.fixture
async def small_api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    """The API with a catalog small enough for tiny models on a CPU (real frame counts, small sizes)."""
    from worker_harness import small_settings

    async for harness in serve_api(small_settings(api_settings)):
        yield harness
