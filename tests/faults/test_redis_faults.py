"""Redis loses its data or goes away while jobs are submitted, queued and running: nothing is lost or half-made.

Postgres is the record and Redis is rebuilt from it (DESIGN §4): a FLUSHALL or a restart without
persistence loses queue messages, processing lists and heartbeats, and the sweeper pushes the
jobs again; a Redis that cannot be reached makes submits answer 503 with `Retry-After` and leave
no row, no ledger entry and no balance change behind.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chaos import Submitter, api_client, running_workers, served, settle, stop_task, unfinished
from invariants import Figures, audit, record, scaled
from proxy import tcp_proxy
from servers import RedisServer
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api.settings import ApiSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

WORKERS = 2
SUBMITTERS = 4


async def _submit_all(submitter: Submitter, total: int) -> None:
    """`total` jobs from a few concurrent clients, at about the pace the workers take them."""
    remaining = iter(range(total))

    async def client() -> None:
        for _ in remaining:
            await submitter.submit()
            await asyncio.sleep(random.uniform(0.0, 0.6))

    await asyncio.gather(*(client() for _ in range(SUBMITTERS)))


Breaker = Callable[[AsyncEngine, asyncio.Event], Awaitable[None]]


async def _jobs_while_breaking(settings: ApiSettings, total: int, checkpoints: Path, work_root: Path,
                               breaker: Breaker, mend: Callable[[], None]) -> tuple[Submitter, Figures]:
    """Submit `total` jobs to workers while `breaker` breaks Redis (until everything submitted has nearly
    finished), then `mend` it, let every job settle, and audit the store."""
    async with served(settings) as api:
        user = uuid.uuid4()
        await api.set_balance(user, 3 * total)
        async with api_client(api) as client, running_workers(api, checkpoints, work_root, WORKERS,
                                                              queues=["sdxl"], redis_url=settings.redis_url):
            submitter = Submitter(client, api.state.engine, user)
            submitted = asyncio.Event()
            breaking = asyncio.create_task(breaker(api.state.engine, submitted))
            try:
                await _submit_all(submitter, total)
                submitted.set()
                await breaking
            finally:
                await stop_task(breaking)
                mend()
            await settle(api.state.engine)
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
    figures.wrongly_accepted = submitter.half_created + submitter.without_retry_after
    return submitter, figures


async def test_flushing_or_restarting_redis_under_load_loses_no_job(
        chaos_settings: ApiSettings, redis_server: RedisServer, tiny_checkpoints: Path, tmp_path: Path,
        started: float) -> None:
    total = scaled(200)
    faults: Counter[str] = Counter()

    async def chaos(engine: AsyncEngine, submitted: asyncio.Event) -> None:
        while not (submitted.is_set() and await unfinished(engine) <= 2):
            await asyncio.sleep(random.uniform(0.2, 1.0))
            if random.random() < 0.5:
                client = aioredis.Redis.from_url(redis_server.url)
                try:
                    await client.flushall()
                    faults["flushall"] += 1
                finally:
                    await client.aclose()
            else:
                await asyncio.to_thread(redis_server.stop)
                await asyncio.sleep(random.uniform(0.0, 0.5))
                await asyncio.to_thread(redis_server.start)
                faults["restart"] += 1

    def mend() -> None:
        if redis_server.process is None:
            redis_server.start()

    submitter, figures = await _jobs_while_breaking(chaos_settings, total, tiny_checkpoints, tmp_path, chaos, mend)
    # No worker dies here: a job run twice means the sweeper took a live worker for dead after the flush.
    live_requeued = figures.extra["reruns"]
    figures.duplicates += live_requeued
    record("redis-flush-restart", figures, started, flushes=faults["flushall"], restarts=faults["restart"],
           refused_503=submitter.refusals.get(503, 0), submits=total, live_workers_jobs_requeued=live_requeued)


async def test_redis_unreachable_for_a_while_refuses_cleanly_and_completes_everything_accepted(
        chaos_settings: ApiSettings, redis_server: RedisServer, tiny_checkpoints: Path, tmp_path: Path,
        started: float) -> None:
    total = scaled(200)
    async with tcp_proxy(redis_server.port) as proxy:
        outage_seconds = 0.0

        async def partitions(engine: AsyncEngine, submitted: asyncio.Event) -> None:
            nonlocal outage_seconds
            while not (submitted.is_set() and await unfinished(engine) <= 2):
                await asyncio.sleep(random.uniform(0.5, 2.0))
                # Some outages outlast the workers' heartbeat TTL (3 s): a live worker must not lose its job.
                down = random.uniform(0.3, 3.5)
                proxy.cut()
                await asyncio.sleep(down)
                proxy.restore()
                outage_seconds += down

        settings = chaos_settings.model_copy(update={"redis_url": proxy.url})
        submitter, figures = await _jobs_while_breaking(settings, total, tiny_checkpoints, tmp_path, partitions,
                                                        proxy.restore)
    # Every job the API accepted completes once Redis is back: none may fail for the outage.
    figures.lost += figures.failed
    record("redis-unreachable", figures, started, outages=proxy.cuts, outage_seconds=round(outage_seconds, 1),
           refused_503=submitter.refusals.get(503, 0), submits=total)
