"""Fair use under faults: one user submits as fast as the API lets them while others submit a few jobs,
two workers run them, and Redis is flushed again and again.

Each 429 (the user's cap, the submit rate) must leave no job and no charge; no job is lost or run twice;
and the others' jobs are not held behind the heavy user's burst (the fair order, rebuilt from the store
after each flush).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from chaos import Submitter, api_client, running_workers, served, settle
from invariants import audit, record, scaled
from servers import RedisServer

from edge_api.settings import ApiSettings
from jobs.db import as_utc
from jobs.tables import jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LIGHT_USERS = 8


async def waits_of(engine: sa.ext.asyncio.AsyncEngine, user: uuid.UUID) -> list[float]:
    query = sa.select(jobs.c.created_at, jobs.c.started_at).where(jobs.c.user_id == user,
                                                                  jobs.c.started_at.is_not(None))
    async with engine.connect() as conn:
        return [(as_utc(s) - as_utc(c)).total_seconds() for c, s in await conn.execute(query)]  # type: ignore[operator]


async def test_refusals_leave_nothing_and_the_fair_order_survives_redis_flushes(
        chaos_settings: ApiSettings, redis_server: RedisServer, tiny_checkpoints: Path, tmp_path: Path,
        started: float) -> None:
    settings = chaos_settings.model_copy(update={
        "user_active_jobs": {"sdxl_queue": 4, "wan_queue": 2}, "rate_limit_submits": 20,
        "rate_limit_window_seconds": 2})
    light_jobs = scaled(3)
    flushes = 0
    async with served(settings) as api:
        engine = api.state.engine
        heavy, lights = uuid.uuid4(), [uuid.uuid4() for _ in range(LIGHT_USERS)]
        balances = dict.fromkeys((heavy, *lights), 1000)
        for user, balance in balances.items():
            await api.set_balance(user, balance)
        async with api_client(api) as client, running_workers(api, tiny_checkpoints, tmp_path, 2, queues=["sdxl"],
                                                              redis_url=settings.redis_url):
            submitters = {user: Submitter(client, engine, user, job_types=("sdxl_image_fast",))
                          for user in (heavy, *lights)}
            # Warm up: both workers have loaded their models before the waits are measured.
            warm_up = uuid.uuid4()
            balances[warm_up] = 10
            await api.set_balance(warm_up, 10)
            first = Submitter(client, engine, warm_up, job_types=("sdxl_image_fast",))
            await asyncio.gather(first.submit(), first.submit())
            await settle(engine)
            done = asyncio.Event()

            async def flood() -> None:
                while not done.is_set():
                    await submitters[heavy].submit()
                    await asyncio.sleep(0.01)

            async def light(user: uuid.UUID) -> None:
                for _ in range(light_jobs):
                    await asyncio.sleep(random.uniform(0.3, 2.0))
                    await submitters[user].submit()

            async def flush() -> None:
                nonlocal flushes
                while not done.is_set():
                    await asyncio.sleep(random.uniform(0.5, 1.5))
                    client_ = aioredis.Redis.from_url(redis_server.url)
                    try:
                        await client_.flushall()
                        flushes += 1
                    finally:
                        await client_.aclose()

            background = [asyncio.create_task(flood()), asyncio.create_task(flush())]
            await asyncio.gather(*(light(user) for user in lights))
            done.set()
            await asyncio.gather(*background)
            await settle(engine)
        accepted = [j for s in (first, *submitters.values()) for j in s.accepted.values()]
        figures = await audit(engine, api.state.catalog, starting_balances=balances, accepted=accepted)
        light_waits = [w for user in lights for w in await waits_of(engine, user)]
        heavy_waits = await waits_of(engine, heavy)
    refusals = {code: sum(s.refusals.get(code, 0) for s in submitters.values()) for code in (429, 503)}
    figures.wrongly_accepted += sum(s.left_by_429 + s.without_retry_after + s.half_created
                                    for s in submitters.values())
    figures.server_errors = sum(n for s in submitters.values() for code, n in s.refusals.items()
                                if code not in (429, 503))
    # Every light user's job was accepted: the cap and the rate are the heavy user's alone to meet.
    figures.lost += sum(light_jobs - len(submitters[user].accepted) for user in lights)
    record("fair-use", figures, started, refused_429=refusals[429], refused_503=refusals[503], flushes=flushes,
           heavy_jobs=len(submitters[heavy].accepted), light_jobs=len(light_waits),
           light_wait_p50_s=round(statistics.median(light_waits), 2),
           heavy_wait_p50_s=round(statistics.median(heavy_waits), 2))
    assert refusals[429] > 0  # the heavy user did meet the limits
