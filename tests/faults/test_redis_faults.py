"""Redis loses its data or goes away while jobs are submitted, queued and running: nothing is lost or half-made.

Postgres is the record and Redis is rebuilt from it (docs/lifecycle.md): a FLUSHALL or a restart without
persistence loses queue messages, processing lists and heartbeats, and the sweeper pushes the
jobs again; a Redis that cannot be reached makes submits answer 503 with `Retry-After` and leave
no row, no ledger entry and no balance change behind.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chaos import Partitions, jobs_while_breaking, unfinished
from invariants import record, scaled
from proxy import tcp_proxy
from servers import RedisServer
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api.settings import ApiSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

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

    submitter, figures = await jobs_while_breaking(chaos_settings, total, tiny_checkpoints, tmp_path, chaos, mend)
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
        # Some outages outlast the workers' heartbeat TTL (3 s): a live worker must not lose its job.
        partitions = Partitions(proxy, longest=3.5)
        settings = chaos_settings.model_copy(update={"redis_url": proxy.url})
        submitter, figures = await jobs_while_breaking(settings, total, tiny_checkpoints, tmp_path, partitions,
                                                        proxy.restore)
    # Every job the API accepted completes once Redis is back: none may fail for the outage.
    figures.lost += figures.failed
    record("redis-unreachable", figures, started, outages=proxy.cuts, outage_seconds=round(partitions.seconds, 1),
           refused_503=submitter.refusals.get(503, 0), submits=total)
