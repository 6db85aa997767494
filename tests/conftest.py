"""Shared fixtures: real Postgres and Redis servers on free ports, and the API served by uvicorn over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from servers import PostgresServer, RedisServer, free_port

from edge_api.app import create_app
from edge_api.auth import mint_token
from edge_api.settings import ApiSettings
from edge_api.state import AppState
from jobs.migrations import apply_migrations
from jobs.webhooks import new_secret, signed_headers

JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"
TEMPLATE_DB = "ourvidz_template"


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


@pytest.fixture
async def postgres_url(pg_server: PostgresServer, pg_template: str) -> AsyncIterator[str]:
    """A fresh database with the migrations applied, for one test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(pg_server.url)
    await conn.execute(f"create database {name} template {TEMPLATE_DB}")
    yield pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    await conn.execute(f"drop database if exists {name} with (force)")
    await conn.close()


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


@dataclass
class Api:
    """The API served over real HTTP, with the helpers tests need to talk to it."""

    url: str
    client: httpx.AsyncClient
    settings: ApiSettings
    app: Any
    users: dict[str, uuid.UUID] = field(default_factory=dict)

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.ourvidz
        return state

    def token(self, user_id: uuid.UUID, **claims: Any) -> str:
        return mint_token(JWT_SECRET, user_id, **claims)

    def auth(self, user_id: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id)}"}

    async def submit(self, user_id: uuid.UUID, job_type: str = "sdxl_image_fast", prompt: str = "a red fox",
                     headers: dict[str, str] | None = None, **metadata: Any) -> httpx.Response:
        body = {"jobType": job_type, "metadata": {"prompt": prompt, **metadata}}
        return await self.client.post("/api/queue-job", json=body, headers={**self.auth(user_id), **(headers or {})})

    async def callback(self, body: dict[str, Any], msg_id: str | None = None, secret: str | None = None,
                       raw: bytes | None = None, **header_overrides: str) -> httpx.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        headers = signed_headers(secret or self.settings.callback_secret, data, msg_id or f"msg_{uuid.uuid4().hex}")
        headers.update(header_overrides)
        return await self.client.post("/api/job-callback", content=data, headers=headers)

    async def set_balance(self, user_id: uuid.UUID, balance: int) -> None:
        from jobs.db import upsert
        from jobs.tables import profiles

        statement = upsert(self.state.engine, profiles).values(id=user_id, token_balance=balance)
        statement = statement.on_conflict_do_update(index_elements=[profiles.c.id], set_={"token_balance": balance})
        async with self.state.engine.begin() as conn:
            await conn.execute(statement)


async def serve_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """Run the app under uvicorn on a free port in this event loop, and yield a client for it."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    # The test runner owns the signals; uvicorn must not take Ctrl-C away from it.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        yield Api(url=url, client=client, settings=settings, app=app)
    server.should_exit = True
    await task


@pytest.fixture
def api_settings(postgres_url: str, redis_url: str, tmp_path: Path) -> ApiSettings:
    """Production-shaped settings (Postgres, Redis); tests change fields with `model_copy(update=...)`."""
    return ApiSettings(
        database_url=postgres_url, redis_url=redis_url, jwt_secret=JWT_SECRET, callback_secret=new_secret(),
        storage="local", storage_dir=tmp_path / "storage", files_secret="files-secret-for-tests",
        starting_credits=0, sweeper_enabled=False, outbox_grace_seconds=0,
    )


@pytest.fixture
async def api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async for harness in serve_api(api_settings):
        yield harness


@pytest.fixture
def user() -> uuid.UUID:
    return uuid.uuid4()
