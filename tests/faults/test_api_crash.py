"""The API SIGKILLed at random moments under load, some of them between a job's commit and its queue push.

`POST /api/queue-job` commits the job and its charge, then pushes (a transactional outbox, docs/lifecycle.md).
Here the API runs in a process of its own, its Redis reached through a proxy that slows every
command, so that kills often land after the commit and before the push. Clients retry with their
`Idempotency-Key` until answered; the restarted API's sweeper pushes the committed jobs; workers
complete them. Every accepted job completes once, and no retry charges twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from chaos import Endpoint, Submitter, running_workers, settle, start_api
from invariants import audit, record, scaled
from processes import Proc
from proxy import tcp_proxy
from servers import RedisServer, free_port

from edge_api.settings import ApiSettings
from jobs.db import open_engine, upsert
from jobs.tables import jobs, profiles

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = 32
REDIS_DELAY = 0.03  # seconds added to each command the API sends to Redis: the commit-to-push window


async def _unpushed(engine: sa.ext.asyncio.AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
            jobs.c.status == "queued", jobs.c.enqueued_at.is_(None)))).scalar_one())


async def test_an_api_killed_between_commit_and_push_loses_no_job_and_charges_no_retry_twice(
        chaos_settings: ApiSettings, redis_server: RedisServer, tiny_checkpoints: Path, tmp_path: Path,
        started: float) -> None:
    total, kills = scaled(200), scaled(12)
    user = uuid.uuid4()
    engine = open_engine(chaos_settings.database_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        async with engine.begin() as conn:
            await conn.execute(upsert(engine, profiles).values(id=user, token_balance=3 * total))
        async with tcp_proxy(redis_server.port, delay=REDIS_DELAY) as slow_redis, \
                httpx.AsyncClient(base_url=url, timeout=30.0, limits=httpx.Limits(max_connections=200)) as client:
            settings = chaos_settings.model_copy(update={"redis_url": slow_redis.url})
            api: Proc | None = await start_api(settings, port, tmp_path / "api.log")
            submitter = Submitter(client, engine, user)
            orphans_seen = 0
            remaining = iter(range(total))

            async def one_client() -> None:
                for _ in remaining:
                    await submitter.submit(retry_wait=0.1, max_tries=10_000)

            # The workers reach the API through its one port, whichever process answers there.
            endpoint = Endpoint(url, chaos_settings)
            async with running_workers(endpoint, tiny_checkpoints, tmp_path, 2, queues=["sdxl"]):
                clients = asyncio.gather(*(one_client() for _ in range(CLIENTS)))
                try:
                    for _ in range(kills):
                        await asyncio.sleep(random.uniform(0.3, 1.5))
                        assert api is not None
                        api.signal(signal.SIGKILL)
                        await api.process.wait()
                        api = None
                        orphans_seen += await _unpushed(engine)  # committed, charged, never pushed
                        api = await start_api(settings, port, tmp_path / "api.log")
                    await clients
                finally:
                    if not clients.done():
                        clients.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await clients
                await settle(engine)
            assert api is not None
            await api.stop()
        figures = await audit(engine, settings.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
        # Every accepted job must complete; and every job in the store was accepted under one key.
        figures.lost += figures.failed
        async with engine.connect() as conn:
            keys = (await conn.execute(sa.select(sa.func.count(sa.distinct(jobs.c.idempotency_key))))).scalar_one()
        figures.double_charges += figures.jobs - int(keys)
        record("api-crash-before-push", figures, started, kills=kills, committed_unpushed_at_kill=orphans_seen,
               connection_errors=submitter.connection_errors, submits=total)
    finally:
        await engine.dispose()
