"""Callbacks replayed, stale, and racing the deadline sweep: a job is completed or refunded, never both.

Each job is claimed through the real queue and reported through the real API: the `processing` claim
is replayed 5 times at once with one `webhook-id`; half of the jobs are handed back and claimed again,
so that their first attempt's late `completed` is stale; then, with the job past its deadline, the
current attempt's `completed` (replayed 5 times at once) races the sweeper that fails and refunds
overdue jobs (docs/lifecycle.md: "callbacks are idempotent by webhook-id and fenced by the attempt").
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from chaos import FAULT_CATALOG, FakeWorker, served
from harness import Api
from invariants import audit, record, scaled

from edge_api.settings import ApiSettings
from jobs.db import utcnow
from jobs.tables import jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BATCH = 25
REPLAYS = 5


async def _prepare(api: Api, worker: FakeWorker, index: int, message: dict[str, Any],
                   outcomes: Counter[str]) -> list[Awaitable[httpx.Response]]:
    """Claim (replayed), maybe hand back and claim again, pass the deadline; return the late callbacks."""
    job_id = message["id"]
    claims = await asyncio.gather(*(worker.report(job_id, "processing", msg_id=f"claim-{job_id}", progress=0)
                                    for _ in range(REPLAYS)))
    if {c.status_code for c in claims} != {200} or {c.json().get("attempt") for c in claims} != {1}:
        outcomes["claim_replays_wrong"] += 1
    attempt = 1
    stale: list[Awaitable[httpx.Response]] = []
    if index % 2 == 0:
        # Handed back (its model process died), then claimed again: attempt 1 is over.
        await worker.report(job_id, "queued", attempt=1, error_message="the model process died")
        attempt = await worker.claim(job_id) or 0
        stale = [worker.report(job_id, "completed", attempt=1, assets=worker.assets(message, 1))
                 for _ in range(REPLAYS)]
    async with api.state.engine.begin() as conn:  # past its deadline, as if it had run that long
        await conn.execute(sa.update(jobs).where(jobs.c.id == uuid.UUID(job_id)).values(
            started_at=utcnow() - timedelta(seconds=api.settings.job_timeout_seconds + 1)))
    assets = worker.assets(message, int(message["config"]["num_images"]))
    late = [worker.report(job_id, "completed", attempt=attempt, msg_id=f"done-{job_id}", assets=assets)
            for _ in range(REPLAYS)]
    return late + stale


def _judge(answers: list[httpx.Response], outcomes: Counter[str]) -> None:
    late, stale = answers[:REPLAYS], answers[REPLAYS:]
    accepted = sum(a.status_code == 200 for a in late)
    if accepted not in (0, REPLAYS):  # every replay gets the first delivery's answer, whatever it was
        outcomes["replays_disagree"] += 1
    outcomes["stale_accepted"] += sum(a.status_code == 200 for a in stale)


async def test_replayed_stale_and_late_callbacks_racing_the_deadline_never_complete_and_refund_a_job(
        api_settings: ApiSettings, started: float) -> None:
    total = scaled(500)
    settings = api_settings.model_copy(update={"catalog_overrides": FAULT_CATALOG, "max_queue_depth": 10**6,
                                               "job_timeout_seconds": 600.0})
    async with served(settings) as api:
        users = [uuid.uuid4() for _ in range(5)]
        for user in users:
            await api.set_balance(user, 3 * total)
        worker = FakeWorker(api, "gpu-racer")
        await worker.heartbeat()
        outcomes: Counter[str] = Counter()
        accepted: list[str] = []
        for first in range(0, total, BATCH):
            batch = range(first, min(first + BATCH, total))
            job_types = ("sdxl_image_fast", "sdxl_image_high")
            accepted += await asyncio.gather(*(api.submitted(users[i % len(users)], job_types[i % 2]) for i in batch))
            taken = [await worker.take() for _ in batch]
            messages = [t for t in taken if t is not None]
            assert len(messages) == len(batch)
            late = await asyncio.gather(*(_prepare(api, worker, i, m, outcomes)
                                          for i, (_, m) in zip(batch, messages, strict=True)))
            # The sweep and every job's late callbacks, all at once.
            results = await asyncio.gather(api.state.sweeper.sweep(), *(asyncio.gather(*calls) for calls in late))
            for answers in results[1:]:
                _judge(list(answers), outcomes)
            await api.state.sweeper.sweep()
            for payload, _ in messages:
                await worker.ack(payload)
        figures = await audit(api.state.engine, api.state.catalog,
                              starting_balances=dict.fromkeys(users, 3 * total), accepted=accepted)
        # A replay answered unlike its first delivery, or a stale attempt accepted, is a duplicate.
        figures.duplicates += (outcomes["replays_disagree"] + outcomes["stale_accepted"]
                               + outcomes["claim_replays_wrong"])
        record("callback-replays-and-deadline-race", figures, started, races=total, replays_each=REPLAYS,
               late_success_won=figures.completed, deadline_won=figures.failed,
               stale_callbacks_sent=REPLAYS * ((total + 1) // 2))
