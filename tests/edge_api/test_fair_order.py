"""The fair order within a queue: one user's burst does not hold back everyone else's first job.

A stand-in worker takes messages off the reference's list as old and new workers do (`RPOP`), claims
and ends each job by signed callbacks, and the order in which jobs reach it is what users get.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from harness import Api, serve_api

from edge_api.settings import ApiSettings
from jobs.catalog import SDXL_QUEUE
from jobs.queue import RedisQueue


@pytest.fixture
def fair_settings(api_settings: ApiSettings) -> ApiSettings:
    return api_settings.model_copy(update={"fair_lookahead": 1})


@pytest.fixture
async def fair(fair_settings: ApiSettings) -> AsyncIterator[Api]:
    async for api in serve_api(fair_settings):
        yield api


async def burst(api: Api, heavy: uuid.UUID, burst_size: int, others: int) -> tuple[list[str], list[str]]:
    """The heavy user's burst, then one job from each of the others; returns both lists of job ids."""
    await api.set_balance(heavy, 100)
    mine = [await api.submitted(heavy) for _ in range(burst_size)]
    theirs = []
    for _ in range(others):
        user = uuid.uuid4()
        await api.set_balance(user, 5)
        theirs.append(await api.submitted(user))
    return mine, theirs


async def rpop(api: Api, queue: str = SDXL_QUEUE, wait: float = 10.0) -> str:
    """The next message's job id, as an old worker takes it (waiting for the list to be fed)."""
    assert api.settings.redis_url is not None
    client = aioredis.Redis.from_url(api.settings.redis_url, decode_responses=True)
    try:
        for _ in range(int(wait / 0.02)):
            raw = await client.rpop(queue)
            if raw is not None:
                job_id: str = json.loads(raw)["id"]
                return job_id
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    raise AssertionError(f"nothing was fed to {queue} in {wait} s")


async def run_one(api: Api, job_id: str) -> None:
    claimed = await api.claim(job_id)
    assert claimed.status_code == 200, claimed.text
    ended = await api.callback({"job_id": job_id, "status": "failed", "attempt": claimed.json()["attempt"],
                                "error_message": "done"})
    assert ended.status_code == 200, ended.text


async def run_all(api: Api, count: int) -> list[str]:
    """Run jobs as they come until `count` ran. A message whose claim is refused is dropped, as workers do:
    the sweeper may push a job again that an `RPOP` took a moment before its claim (see docs/lifecycle.md)."""
    order: list[str] = []
    while len(order) < count:
        job_id = await rpop(api)
        claimed = await api.claim(job_id)
        if claimed.status_code == 409:
            continue
        assert claimed.status_code == 200, claimed.text
        order.append(job_id)
        ended = await api.callback({"job_id": job_id, "status": "failed", "attempt": claimed.json()["attempt"],
                                    "error_message": "done"})
        assert ended.status_code == 200, ended.text
    return order


async def test_a_users_second_job_waits_behind_everyone_elses_first(fair: Api, user: uuid.UUID) -> None:
    mine, theirs = await burst(fair, user, 10, 5)
    assert await run_all(fair, 15) == [mine[0], *theirs, *mine[1:]]


async def test_without_the_fair_order_the_burst_runs_first(api: Api, user: uuid.UUID) -> None:
    mine, theirs = await burst(api, user, 10, 5)
    assert await run_all(api, 15) == [*mine, *theirs]


async def test_the_list_holds_one_message_per_idle_worker_plus_the_lookahead(fair: Api, user: uuid.UUID) -> None:
    await burst(fair, user, 6, 0)
    assert len(await fair.queued_messages(SDXL_QUEUE)) == 1
    queue = RedisQueue.from_url(str(fair.settings.redis_url), [SDXL_QUEUE])
    try:
        await queue.heartbeat("w1", [SDXL_QUEUE], ttl=30)
        await queue.heartbeat("w2", [SDXL_QUEUE], ttl=30)
        await asyncio.sleep(fair.state.feeder.WORKERS_TTL)
        await fair.submitted(user)
        assert len(await fair.queued_messages(SDXL_QUEUE)) == 3
        await fair.claim(await rpop(fair), worker_id="w1")  # w1 is busy now: it needs no message waiting
        await fair.submitted(user)
        assert len(await fair.queued_messages(SDXL_QUEUE)) == 2
    finally:
        await queue.aclose()


async def test_positions_and_waits_follow_the_fair_order(fair: Api, user: uuid.UUID) -> None:
    mine, theirs = await burst(fair, user, 10, 5)
    positions = {}
    for job_id in (mine[0], theirs[0], theirs[-1], mine[1], mine[-1]):
        view = (await fair.client.get(f"/api/jobs/{job_id}", headers=await owner_auth(fair, job_id))).json()
        positions[job_id] = (view["queue_position"], view["estimated_wait_seconds"])
    assert [p for p, _ in positions.values()] == [1, 2, 6, 7, 15]
    waits = [w for _, w in positions.values()]
    assert waits == sorted(waits) and waits[0] > 0
    status = (await fair.client.get("/api/queue-status")).json()
    assert {q["queue"]: q["depth"] for q in status["queues"]}[SDXL_QUEUE] == 15


async def owner_auth(api: Api, job_id: str) -> dict[str, str]:
    return api.auth((await api.job_row(job_id))["user_id"])


def assert_fair(order: list[str], mine: list[str], theirs: list[str]) -> None:
    """Every job ran once, and everyone else's job before the heavy user's second one to run. (A job lost
    with its message, or with its worker, gets its next try once that is noticed, after the next of its
    user's jobs perhaps.)"""
    assert sorted(order) == sorted(mine + theirs) and len(set(order)) == len(order)
    second = [j for j in order if j in mine][1]
    assert all(order.index(t) < order.index(second) for t in theirs)


async def test_an_old_worker_that_never_calls_back_is_fed_by_the_sweeper(
        fair_settings: ApiSettings, user: uuid.UUID) -> None:
    # A long grace: the jobs taken are not re-pushed while this test runs (they are never claimed).
    settings = fair_settings.model_copy(update={"sweeper_enabled": True, "sweep_interval_seconds": 0.2,
                                                "outbox_grace_seconds": 60.0})
    async for api in serve_api(settings):
        mine, theirs = await burst(api, user, 3, 2)
        taken = [await rpop(api) for _ in range(5)]  # nothing is claimed: only the sweeper feeds the list
        assert taken == [mine[0], *theirs, *mine[1:]]


async def test_the_fair_order_holds_across_a_redis_flush(fair_settings: ApiSettings, user: uuid.UUID) -> None:
    settings = fair_settings.model_copy(update={"sweeper_enabled": True, "sweep_interval_seconds": 0.2,
                                                "outbox_grace_seconds": 0.5})
    async for api in serve_api(settings):
        mine, theirs = await burst(api, user, 4, 3)
        client = aioredis.Redis.from_url(str(settings.redis_url))
        await client.flushall()
        await client.aclose()
        # The job lost with the flush is pushed again after the grace; meanwhile the next one is fed.
        assert_fair(await run_all(api, 7), mine, theirs)
        assert {r["status"] for r in await api.job_rows()} == {"failed"}  # each ran, and ended, once


async def test_a_job_handed_back_by_a_dead_worker_keeps_its_turn(fair_settings: ApiSettings, user: uuid.UUID) -> None:
    settings = fair_settings.model_copy(update={"sweeper_enabled": True, "sweep_interval_seconds": 0.2,
                                                "outbox_grace_seconds": 0.5})
    async for api in serve_api(settings):
        mine, theirs = await burst(api, user, 3, 2)
        queue = RedisQueue.from_url(str(settings.redis_url), [SDXL_QUEUE])
        try:
            await queue.heartbeat("doomed", [SDXL_QUEUE], ttl=0.5)
            payload = await queue.claim([SDXL_QUEUE], "doomed", timeout=5)
            assert payload is not None and json.loads(payload)["id"] == mine[0]
            assert (await api.claim(mine[0], worker_id="doomed")).status_code == 200
        finally:
            await queue.aclose()  # it dies: no ack, no more heartbeats
        assert_fair(await run_all(api, 5), mine, theirs)
        assert (await api.job_row(mine[0]))["attempts"] == 2


async def test_metrics_give_the_users_waits_and_the_queue_wait_at_each_claim(fair: Api, user: uuid.UUID) -> None:
    await burst(fair, user, 3, 2)
    await run_one(fair, await rpop(fair))
    text = (await fair.client.get("/metrics")).text
    assert 'ourvidz_queue_wait_seconds_count{queue="sdxl_queue"} 1.0' in text
    waits = {line.split("} ")[0]: float(line.split("} ")[1]) for line in text.splitlines()
             if line.startswith("ourvidz_user_wait_seconds{") and 'queue="sdxl_queue"' in line}
    assert len(waits) == 3 and all(w > 0 for w in waits.values())  # three users wait: p50, p90, p99
