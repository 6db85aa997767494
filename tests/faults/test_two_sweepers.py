"""Two API replicas sweeping the same store and Redis at once: no job pushed into two completions, no double refund.

Both replicas run their sweeper every 0.1 s, and both are made to believe they hold the leader lock,
so that their passes overlap all the time (the lock makes that rare; the store's conditional moves and
the ledger's `unique (job_id, kind)` must make it harmless, docs/lifecycle.md). The sweepers get work: Redis
is flushed (jobs to push again), workers die holding jobs (messages to hand back), workers hang
(deadlines to enforce and refund), while real workers run the rest.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chaos import FakeWorker, Submitter, api_client, running_workers, served, settle, stop_task, unfinished
from harness import Api
from invariants import audit, record, scaled

from edge_api.settings import ApiSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEADLINE = 10.0


async def _always_leader() -> bool:
    return True


async def _saboteur(api: Api, faults: Counter[str]) -> None:
    """Now and then a worker that takes a job and dies with it, or hangs on it until its deadline."""
    while True:
        await asyncio.sleep(random.uniform(0.05, 0.4))
        worker = FakeWorker(api)
        await worker.heartbeat(ttl=600)
        taken = await worker.take()
        if taken is None or await worker.claim(taken[1]["id"]) is None:
            continue
        if random.random() < 0.5:
            await worker.die()
            faults["worker_died"] += 1
        else:
            faults["worker_hung"] += 1


async def _flusher(url: str, faults: Counter[str]) -> None:
    while True:
        await asyncio.sleep(random.uniform(0.5, 2.0))
        client = aioredis.Redis.from_url(url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        faults["flushall"] += 1


async def test_two_sweepers_at_once_never_complete_a_job_twice_nor_refund_twice(
        chaos_settings: ApiSettings, tiny_checkpoints: Path, tmp_path: Path, started: float) -> None:
    total = scaled(200)
    settings = chaos_settings.model_copy(update={"sweep_interval_seconds": 0.1, "job_timeout_seconds": DEADLINE})
    async with served(settings) as first, served(settings) as second:
        for replica in (first, second):
            replica.state.sweeper._take_lock = _always_leader  # type: ignore[method-assign]
        user = uuid.uuid4()
        await first.set_balance(user, 3 * total)
        faults: Counter[str] = Counter()
        async with api_client(first) as client, running_workers(first, tiny_checkpoints, tmp_path, 2,
                                                                queues=["sdxl"]) as workers:
            submitter = Submitter(client, first.state.engine, user)
            breaking = [asyncio.create_task(_saboteur(second, faults)),
                        asyncio.create_task(_flusher(settings.redis_url or "", faults))]
            try:
                for _ in range(total):
                    await submitter.submit()
                    await asyncio.sleep(random.uniform(0.0, 0.15))
                while await unfinished(first.state.engine) > total // 10:
                    await asyncio.sleep(0.5)
            finally:
                for task in breaking:
                    await stop_task(task)
            await settle(first.state.engine)
            dropped = sum(w.stats.dropped for w in workers)
        figures = await audit(first.state.engine, first.state.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
        record("two-sweepers", figures, started, sweepers=2, flushes=faults["flushall"],
               workers_died=faults["worker_died"], workers_hung=faults["worker_hung"],
               duplicate_messages_dropped=dropped, submits=total)
