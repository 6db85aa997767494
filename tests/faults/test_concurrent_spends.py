"""One user, hundreds of submits at once: the balance never goes below zero, no credit is spent twice,
none is refused while it was there, and cancels racing each other refund each job once.

Each round gives the user a balance, fires many submits of mixed prices at once, then cancels every
accepted job twice at once; the balance must come back to where it started (docs/lifecycle.md: "decrement
the balance, refusing to go below zero"; "charge and refund are each recorded once").
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid

import httpx
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from chaos import FAULT_CATALOG, api_client, served
from harness import JWT_SECRET
from invariants import audit, record, scaled

from edge_api.auth import mint_token
from edge_api.settings import ApiSettings
from jobs.tables import profiles

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

JOB_TYPES = ("sdxl_image_fast", "sdxl_image_high", "video_fast", "video_high")  # prices 1, 2, 3, 5
AT_ONCE = 300


async def test_concurrent_spends_never_overdraw_and_cancels_refund_once(
        api_settings: ApiSettings, started: float) -> None:
    rounds = scaled(3)
    settings = api_settings.model_copy(update={"catalog_overrides": FAULT_CATALOG, "max_queue_depth": 10**6})
    async with served(settings) as api:
        user = uuid.uuid4()
        token = {"Authorization": f"Bearer {mint_token(JWT_SECRET, user)}"}
        prices = {t: api.state.catalog[t].price for t in JOB_TYPES}
        lowest = min(prices.values())
        overdrawn = wrongly_refused = double_refunds = 0
        accepted_ids: list[str] = []
        refused = 0
        balance_after = 0
        for _ in range(rounds):
            start_balance = random.randint(AT_ONCE // 3, AT_ONCE)  # too little for all of them
            await api.set_balance(user, start_balance)
            seen: list[int] = []
            odd: list[str] = []

            async def watch(seen: list[int] = seen) -> None:
                while True:
                    async with api.state.engine.connect() as conn:
                        seen.append(int((await conn.execute(sa.select(profiles.c.token_balance)
                                                            .where(profiles.c.id == user))).scalar_one()))
                    await asyncio.sleep(0.005)

            async def submit(client: httpx.AsyncClient, job_type: str, odd: list[str] = odd
                             ) -> tuple[str, int, str | None]:
                body = {"jobType": job_type, "metadata": {"prompt": "spend"}}
                response = await client.post("/api/queue-job", json=body, headers=token)
                job_id = response.json()["job"]["id"] if response.status_code == 200 else None
                if response.status_code not in (200, 402):
                    odd.append(f"{response.status_code} {response.text[:300]}")
                return job_type, response.status_code, job_id

            watcher = asyncio.create_task(watch())
            try:
                async with api_client(api) as client:  # fresh connections for each burst
                    answers = await asyncio.gather(*(submit(client, random.choice(JOB_TYPES))
                                                     for _ in range(AT_ONCE)))
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            assert not odd, odd[:3]
            spent = sum(prices[t] for t, code, _ in answers if code == 200)
            balance = await api.balance(user)
            assert balance is not None
            overdrawn += (spent > start_balance) + (balance != start_balance - spent) + sum(b < 0 for b in seen)
            # The balance only fell during the round: a refusal of a price the final balance still covers
            # was a refusal of credits that were there.
            wrongly_refused += sum(1 for t, code, _ in answers if code == 402 and prices[t] <= balance)
            refused += sum(code == 402 for _, code, _ in answers)
            ids = [job_id for _, code, job_id in answers if code == 200 and job_id]
            accepted_ids += ids

            async with api_client(api) as client:  # each job canceled twice at once
                cancels = await asyncio.gather(*(client.post(f"/api/jobs/{job_id}/cancel", headers=token)
                                                 for job_id in ids for _ in range(2)))
            double_refunds += sum(
                [cancels[2 * n].status_code, cancels[2 * n + 1].status_code].count(200) != 1 for n in range(len(ids)))
            balance_after = await api.balance(user) or 0
            overdrawn += balance_after != start_balance
            assert lowest <= start_balance
            # Empty the queues for the next round (the cancelled jobs' messages are dropped by workers).
            redis = aioredis.Redis.from_url(settings.redis_url or "")
            await redis.flushall()
            await redis.aclose()
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: balance_after},
                              accepted=accepted_ids)
        # The audit's start is the last round's: every earlier round was refunded whole, so it ends there too.
        figures.double_charges += overdrawn
        figures.missing_refunds += double_refunds
        figures.wrongly_accepted += overdrawn
        record("concurrent-spends", figures, started, rounds=rounds, submits=rounds * AT_ONCE,
               refused_402=refused, wrongly_refused=wrongly_refused, cancels=2 * len(accepted_ids))
        assert wrongly_refused == 0
