"""The API harness: the app served by uvicorn over real HTTP, and the helpers tests use to talk to it.

It lives in its own module (not in `conftest.py`) because several test folders have a `conftest.py`
and only one of them can be imported as `conftest`; tests import `from harness import Api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
import sqlalchemy as sa
import uvicorn
from servers import free_port

from edge_api.app import create_app
from edge_api.auth import mint_token
from edge_api.settings import ApiSettings
from edge_api.state import AppState
from jobs.tables import assets, credit_ledger, jobs, profiles
from jobs.webhooks import signed_headers

JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"


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

        statement = upsert(self.state.engine, profiles).values(id=user_id, token_balance=balance)
        statement = statement.on_conflict_do_update(index_elements=[profiles.c.id], set_={"token_balance": balance})
        async with self.state.engine.begin() as conn:
            await conn.execute(statement)

    # --- Reading the store directly, to check what the API did -----------------------------------

    async def submitted(self, user_id: uuid.UUID, job_type: str = "sdxl_image_fast", **metadata: Any) -> str:
        """Submit a job that must be accepted; returns its id."""
        response = await self.submit(user_id, job_type, **metadata)
        assert response.status_code == 200, response.text
        job_id: str = response.json()["job"]["id"]
        return job_id

    async def claim(self, job_id: str, worker_id: str = "worker-1") -> httpx.Response:
        """The worker's claim: a signed `processing` callback."""
        return await self.callback({"job_id": job_id, "status": "processing", "worker_id": worker_id})

    async def balance(self, user_id: uuid.UUID) -> int | None:
        async with self.state.engine.connect() as conn:
            value = (await conn.execute(sa.select(profiles.c.token_balance)
                                        .where(profiles.c.id == user_id))).scalar()
        return None if value is None else int(value)

    async def ledger(self, user_id: uuid.UUID) -> list[dict[str, Any]]:
        query = sa.select(credit_ledger).where(credit_ledger.c.user_id == user_id).order_by(credit_ledger.c.id)
        async with self.state.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def ledger_sum(self, job_id: str) -> int:
        query = sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.amount), 0)).where(
            credit_ledger.c.job_id == uuid.UUID(job_id))
        async with self.state.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def job_row(self, job_id: str) -> dict[str, Any]:
        async with self.state.engine.connect() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == uuid.UUID(job_id)))).mappings().one()
        return dict(row)

    async def job_rows(self, user_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
        query = sa.select(jobs).order_by(jobs.c.created_at)
        if user_id is not None:
            query = query.where(jobs.c.user_id == user_id)
        async with self.state.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def asset_rows(self, job_id: str) -> list[dict[str, Any]]:
        query = sa.select(assets).where(assets.c.job_id == uuid.UUID(job_id)).order_by(assets.c.position)
        async with self.state.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def queued_messages(self, queue: str) -> list[dict[str, Any]]:
        """The messages waiting on a Redis queue, oldest (next to be consumed) first."""
        assert self.settings.redis_url is not None
        client = aioredis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            raw = await client.lrange(queue, 0, -1)
        finally:
            await client.aclose()
        return [json.loads(item) for item in reversed(raw)]


class _Server(uvicorn.Server):
    """uvicorn's server, told to stop by an event instead of noticing it on its 0.1 s tick, and leaving
    the signals to the test runner."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop = asyncio.Event()

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the Date header once
        await self.stop.wait()


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free port in this event loop; yields its base URL."""
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.stop.set()
        await task


async def serve_api(settings: ApiSettings) -> AsyncIterator[Api]:
    """Run the app under uvicorn on a free port in this event loop, and yield a client for it."""
    app = create_app(settings)
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        yield Api(url=url, client=client, settings=settings, app=app)
