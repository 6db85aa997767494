"""The sweeper rebuilds the queue from the store: lost messages, unpushed jobs, dead workers, timeouts, leases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
import sqlalchemy as sa
from harness import Api, serve_api
from servers import RedisServer

from edge_api.settings import ApiSettings
from edge_api.store import NewJob
from edge_api.sweeper import Sweeper
from jobs.catalog import DEFAULT_CATALOG, SDXL_QUEUE, WAN_QUEUE
from jobs.db import utcnow
from jobs.queue import job_id_of
from jobs.tables import jobs, locks


def other_sweeper(api: Api, owner: str, **overrides: Any) -> Sweeper:
    """A second replica's sweeper on the same store and queue."""
    s = api.settings
    options: dict[str, Any] = {"job_timeout": s.job_timeout_seconds, "queue_timeout": s.queue_timeout_seconds,
                               "outbox_grace": s.outbox_grace_seconds, "interval": s.sweep_interval_seconds,
                               **overrides}
    return Sweeper(api.state.engine, api.state.queue, api.state.catalog, owner=owner, **options)


async def backdate(api: Api, job_id: str, **columns: timedelta) -> None:
    """Move a job's timestamps into the past, as if that much time had gone by."""
    values = {name: utcnow() - ago for name, ago in columns.items()}
    async with api.state.engine.begin() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.id == uuid.UUID(job_id)).values(**values))


async def flush_redis(api: Api) -> None:
    assert api.settings.redis_url is not None
    client = aioredis.Redis.from_url(api.settings.redis_url)
    await client.flushall()
    await client.aclose()


async def take(api: Api, worker: str, queue: str = SDXL_QUEUE, ttl: float = 60) -> str:
    """A worker's BLMOVE and claim callback: the job is processing, its message in the worker's list."""
    await api.state.queue.heartbeat(worker, [queue], ttl=ttl)
    payload = await api.state.queue.claim([queue], worker, timeout=1)
    assert payload is not None
    job_id = job_id_of(payload)
    assert job_id is not None
    assert (await api.claim(job_id, worker)).status_code == 200
    return job_id


async def let_heartbeat_expire(api: Api, worker: str) -> None:
    await api.state.queue.heartbeat(worker, [SDXL_QUEUE], ttl=0.001)
    while worker in await api.state.queue.live_workers():  # Redis drops the key after 1 ms
        await asyncio.sleep(0.005)


async def queued_ids(api: Api, queue: str = SDXL_QUEUE) -> list[str]:
    return [m["id"] for m in await api.queued_messages(queue)]


# --- Lost and unpushed messages -----------------------------------------------------------------------


async def test_flushing_redis_loses_no_job(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    sdxl = [await api.submitted(user, "sdxl_image_fast") for _ in range(3)]
    wan = [await api.submitted(user, "video_fast")]
    await flush_redis(api)
    assert await queued_ids(api) == []
    assert await api.state.sweeper.sweep() is True
    assert sorted(await queued_ids(api)) == sorted(sdxl)
    assert await queued_ids(api, WAN_QUEUE) == wan
    await api.state.sweeper.sweep()  # a second pass finds them queued and pushes nothing twice
    assert sorted(await queued_ids(api)) == sorted(sdxl)
    [message] = await api.queued_messages(WAN_QUEUE)
    assert message["config"]["frame_num"] == 81 and message["bucket"] == "video_fast"


async def test_a_job_whose_push_never_happened_is_pushed(api: Api, user: uuid.UUID) -> None:
    # The API died between its commit and its LPUSH: the row exists, no queue holds it.
    await api.set_balance(user, 5)
    spec = DEFAULT_CATALOG["sdxl_image_high"]
    new = NewJob(user_id=user, spec=spec, max_attempts=3,
                 metadata={"prompt": "orphan", "seed": 7, "credits": spec.price, "bucket": spec.bucket})
    row, created = await api.state.store.create_job(new, starting_credits=0)
    assert created and (await api.job_row(str(row["id"])))["enqueued_at"] is None
    assert await queued_ids(api) == []
    await api.state.sweeper.sweep()
    [message] = await api.queued_messages(SDXL_QUEUE)
    assert (message["id"], message["prompt"], message["config"]["seed"]) == (str(row["id"]), "orphan", 7)
    assert (await api.job_row(str(row["id"])))["enqueued_at"] is not None


async def test_rows_of_another_producer_without_a_seed_or_of_an_unknown_type_do_not_stop_the_pass(
        api: Api, user: uuid.UUID) -> None:
    # An older ourvidz `queue-job` writes no seed; another producer may write a type this catalog lacks.
    await api.set_balance(user, 10)
    spec = DEFAULT_CATALOG["image_fast"]
    unseeded = NewJob(user_id=user, spec=spec, max_attempts=3, metadata={"prompt": "old row", "credits": 1})
    row, _ = await api.state.store.create_job(unseeded, starting_credits=0)
    foreign, _ = await api.state.store.create_job(NewJob(user_id=user, spec=spec, max_attempts=3,
                                                         metadata={"prompt": "x"}), starting_credits=0)
    async with api.state.engine.begin() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.id == foreign["id"]).values(job_type="video_ultra"))
    await api.state.sweeper.sweep()
    [message] = await api.queued_messages(WAN_QUEUE)
    assert message["id"] == str(row["id"]) and message["config"]["seed"] == message["metadata"]["seed"]
    await flush_redis(api)
    await api.state.sweeper.sweep()  # rebuilt: the same seed, drawn from the job's id
    [again] = await api.queued_messages(WAN_QUEUE)
    assert again["config"]["seed"] == message["config"]["seed"]


async def test_a_fresh_unpushed_job_is_left_to_the_api_within_the_grace(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    spec = DEFAULT_CATALOG["image_fast"]
    new = NewJob(user_id=user, spec=spec, max_attempts=3, metadata={"prompt": "x", "seed": 1})
    await api.state.store.create_job(new, starting_credits=0)
    patient = other_sweeper(api, "patient", outbox_grace=3600)
    assert await patient.sweep() is True
    assert await queued_ids(api, WAN_QUEUE) == []


async def test_a_job_held_by_a_live_worker_is_not_pushed_again(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    await api.state.queue.heartbeat("gpu-0", [SDXL_QUEUE], ttl=60)
    assert await api.state.queue.claim([SDXL_QUEUE], "gpu-0", timeout=1) is not None  # not yet claimed in the store
    await api.state.sweeper.sweep()
    assert await queued_ids(api) == []
    assert [job_id_of(p) for p in await api.state.queue.held("gpu-0")] == [job_id]


# --- Dead workers ----------------------------------------------------------------------------------------


async def test_a_dead_workers_job_is_handed_back_and_requeued(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    assert await take(api, "gpu-dead") == job_id
    await let_heartbeat_expire(api, "gpu-dead")
    await api.state.sweeper.sweep()
    row = await api.job_row(job_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 1, None)
    assert await queued_ids(api) == [job_id]
    assert await api.state.queue.held("gpu-dead") == []
    assert await api.state.queue.dead_workers() == []  # forgotten once its list was empty
    assert await take(api, "gpu-new") == job_id
    assert (await api.job_row(job_id))["attempts"] == 2
    assert await api.ledger_sum(job_id) == -1


async def test_a_worker_that_died_before_its_claim_hands_the_message_back(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    assert await api.state.queue.claim([SDXL_QUEUE], "gpu-dead", timeout=1) is not None
    await let_heartbeat_expire(api, "gpu-dead")
    await api.state.sweeper.sweep()
    row = await api.job_row(job_id)
    assert (row["status"], row["attempts"]) == ("queued", 0)
    assert await queued_ids(api) == [job_id]
    assert await api.state.queue.held("gpu-dead") == []


async def test_a_dead_workers_job_out_of_tries_is_failed_and_refunded(api_settings: ApiSettings,
                                                                      user: uuid.UUID) -> None:
    async for api in serve_api(api_settings.model_copy(update={"max_attempts": 1})):
        await api.set_balance(user, 5)
        job_id = await api.submitted(user, "sdxl_image_high")  # costs 2
        await take(api, "gpu-dead")
        await let_heartbeat_expire(api, "gpu-dead")
        await api.state.sweeper.sweep()
        await api.state.sweeper.sweep()
        row = await api.job_row(job_id)
        assert row["status"] == "failed" and "gpu-dead" in row["error_message"]
        assert await queued_ids(api) == []
        assert await api.balance(user) == 5
        assert [e["kind"] for e in await api.ledger(user)] == ["charge", "refund"]


# --- Timeouts and leases ---------------------------------------------------------------------------------


async def test_a_job_running_past_the_timeout_is_failed_and_refunded_once(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    job_id = await api.submitted(user, "video_high")  # costs 5
    await take(api, "gpu-slow", WAN_QUEUE)
    await backdate(api, job_id, started_at=timedelta(seconds=api.settings.job_timeout_seconds + 60))
    for _ in range(3):
        await api.state.sweeper.sweep()
    row = await api.job_row(job_id)
    assert row["status"] == "failed" and "timed out" in row["error_message"]
    assert await api.balance(user) == 10
    assert [e["kind"] for e in await api.ledger(user)] == ["charge", "refund"]
    # The slow worker's late answer changes nothing.
    late = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1,
                               "assets": [f"{user}/{job_id}.mp4"]})
    assert late.status_code == 409
    assert await api.balance(user) == 10


async def test_a_job_nobody_took_in_time_is_failed_and_refunded(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    job_id = await api.submitted(user, "image_high")  # costs 2
    await backdate(api, job_id, created_at=timedelta(seconds=api.settings.queue_timeout_seconds + 60))
    await api.state.sweeper.sweep()
    row = await api.job_row(job_id)
    assert row["status"] == "failed" and "no worker" in row["error_message"]
    assert await api.balance(user) == 10 and await api.ledger_sum(job_id) == 0


async def test_an_expired_lease_requeues_the_job(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    await take(api, "gpu-hung")  # its heartbeat lives on, but it stopped reporting progress
    await backdate(api, job_id, lease_until=timedelta(seconds=1))
    await api.state.sweeper.sweep()
    row = await api.job_row(job_id)
    assert (row["status"], row["attempts"], row["lease_until"]) == ("queued", 1, None)
    assert await queued_ids(api) == [job_id]  # back on the queue for another worker
    assert await api.state.queue.held("gpu-hung") == []
    assert await take(api, "gpu-ok") == job_id
    assert (await api.job_row(job_id))["attempts"] == 2
    stale = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1,
                                "assets": [f"{user}/{job_id}.png"]})
    assert stale.status_code == 409


async def test_an_expired_lease_out_of_tries_fails_and_refunds(api_settings: ApiSettings, user: uuid.UUID) -> None:
    async for api in serve_api(api_settings.model_copy(update={"max_attempts": 1})):
        await api.set_balance(user, 5)
        job_id = await api.submitted(user)
        await take(api, "gpu-hung")
        await backdate(api, job_id, lease_until=timedelta(seconds=1))
        await api.state.sweeper.sweep()
        await api.state.sweeper.sweep()
        assert (await api.job_row(job_id))["status"] == "failed"
        assert await api.balance(user) == 5 and await api.ledger_sum(job_id) == 0


async def test_with_redis_down_the_sweeper_still_fails_overdue_jobs(api: Api, user: uuid.UUID,
                                                                    redis_server: RedisServer) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    await backdate(api, job_id, created_at=timedelta(seconds=api.settings.queue_timeout_seconds + 60))
    redis_server.stop()
    try:
        assert await api.state.sweeper.sweep() is True
    finally:
        redis_server.start()
    assert (await api.job_row(job_id))["status"] == "failed"
    assert await api.balance(user) == 5


# --- One leader ------------------------------------------------------------------------------------------


async def test_only_one_sweeper_holds_the_lock_at_a_time(api: Api) -> None:
    first, second = api.state.sweeper, other_sweeper(api, "replica-2")
    assert await first.sweep() is True
    assert await second.sweep() is False
    assert await first.sweep() is True  # the holder renews its lock
    assert await second.sweep() is False


async def test_another_sweeper_takes_over_when_the_lock_expires(api: Api) -> None:
    first, second = api.state.sweeper, other_sweeper(api, "replica-2")
    assert await first.sweep() is True
    async with api.state.engine.begin() as conn:  # the first replica stopped renewing
        await conn.execute(sa.update(locks).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert await second.sweep() is True
    assert await first.sweep() is False


async def test_concurrent_sweepers_elect_one_leader(api: Api) -> None:
    sweepers = [other_sweeper(api, f"replica-{n}") for n in range(5)]
    results = await asyncio.gather(*(s.sweep() for s in sweepers))
    assert sorted(results) == [False] * 4 + [True]


async def rpop(api: Api, queue: str = SDXL_QUEUE) -> str | None:
    """An old ourvidz worker's take: the message leaves Redis, and no processing list holds it."""
    assert api.settings.redis_url is not None
    client = aioredis.Redis.from_url(api.settings.redis_url, decode_responses=True)
    try:
        payload = await client.rpop(queue)
    finally:
        await client.aclose()
    return None if payload is None else job_id_of(payload)


async def test_a_job_an_old_worker_took_with_rpop_is_never_pushed_again(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    assert await rpop(api) == job_id
    await backdate(api, job_id, enqueued_at=timedelta(minutes=5), created_at=timedelta(minutes=5))
    for _ in range(3):
        assert await api.state.sweeper.sweep()
    assert await api.queued_messages(SDXL_QUEUE) == []
    assert (await api.job_row(job_id))["status"] == "queued"  # until its callback, or its queue deadline


async def test_after_a_flush_the_jobs_whose_messages_were_lost_are_pushed_again(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    taken, waiting = await api.submitted(user), await api.submitted(user)
    assert await rpop(api) == taken
    await flush_redis(api)  # the record of the take goes too: after a data loss the two cannot be told apart
    await api.state.sweeper.sweep()
    assert {m["id"] for m in await api.queued_messages(SDXL_QUEUE)} == {taken, waiting}


async def test_a_job_queued_again_after_its_take_is_pushed_again(api: Api, user: uuid.UUID) -> None:
    """A record older than the job's last push does not count: the job was handed back since."""
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    assert await rpop(api) == job_id
    claimed = await api.claim(job_id)
    back = await api.callback({"job_id": job_id, "status": "queued", "attempt": claimed.json()["attempt"]})
    assert back.status_code == 200, back.text
    await api.state.sweeper.sweep()
    assert [m["id"] for m in await api.queued_messages(SDXL_QUEUE)] == [job_id]
