"""The Redis queue on a real Redis: the reference's lists, consumed with the reliable-queue pattern."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from queue_contract import drain_concurrently
from redis.exceptions import ConnectionError as RedisConnectionError
from servers import free_port

from jobs import keys
from jobs.catalog import QUEUES, SDXL_QUEUE, WAN_QUEUE
from jobs.queue import QueueUnavailable, RedisQueue, job_id_of


def message(job_id: str) -> str:
    return json.dumps({"id": job_id, "type": "sdxl_image_fast"})


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[RedisQueue]:
    q = RedisQueue.from_url(redis_url, QUEUES)
    yield q
    await q.aclose()


async def test_push_is_an_lpush_and_returns_the_depth(queue: RedisQueue, raw: aioredis.Redis) -> None:
    assert await queue.push(SDXL_QUEUE, message("a")) == 1
    assert await queue.push(SDXL_QUEUE, message("b")) == 2
    # LPUSH: the newest message is at the left, consumers take from the right.
    assert await raw.lrange(SDXL_QUEUE, 0, -1) == [message("b"), message("a")]
    assert await queue.depth(SDXL_QUEUE) == 2
    assert await queue.depth(WAN_QUEUE) == 0


async def test_claim_takes_messages_in_push_order(queue: RedisQueue) -> None:
    for name in "abc":
        await queue.push(WAN_QUEUE, message(name))
    claimed = [await queue.claim([WAN_QUEUE], "w1", timeout=1) for _ in range(3)]
    assert [job_id_of(p or "") for p in claimed] == ["a", "b", "c"]


async def test_claim_consumes_what_another_producer_lpushed(queue: RedisQueue, raw: aioredis.Redis) -> None:
    # An existing ourvidz producer LPUSHes onto the same list; this consumer reads it unchanged.
    payload = json.dumps({"id": "legacy-1", "type": "video_fast", "extra": {"kept": True}})
    await raw.lpush(WAN_QUEUE, payload)
    assert await queue.claim([WAN_QUEUE], "w1", timeout=1) == payload


async def test_claim_moves_the_message_into_the_workers_processing_list(queue: RedisQueue,
                                                                        raw: aioredis.Redis) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    payload = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert payload == message("a")
    assert await queue.depth(SDXL_QUEUE) == 0
    assert await raw.lrange(keys.processing_list("w1"), 0, -1) == [payload]
    assert await queue.held("w1") == [payload]
    assert await queue.held("w2") == []


async def test_ack_removes_the_message_from_the_processing_list(queue: RedisQueue) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    await queue.push(SDXL_QUEUE, message("b"))
    first = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    second = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert first is not None and second is not None
    await queue.ack("w1", first)
    assert await queue.held("w1") == [second]
    await queue.ack("w1", second)
    assert await queue.held("w1") == []


async def test_multi_queue_claim_takes_the_first_non_empty_queue_in_order(queue: RedisQueue) -> None:
    await queue.push(WAN_QUEUE, message("wan-1"))
    assert job_id_of(await queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=1) or "") == "wan-1"
    await queue.push(WAN_QUEUE, message("wan-2"))
    await queue.push(SDXL_QUEUE, message("sdxl-1"))
    order = [job_id_of(await queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=1) or "") for _ in range(2)]
    assert order == ["sdxl-1", "wan-2"]


async def test_multi_queue_claim_waits_for_a_message_pushed_later(queue: RedisQueue) -> None:
    waiter = asyncio.create_task(queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=30))
    await asyncio.sleep(0)  # let the claim start blocking
    await queue.push(WAN_QUEUE, message("late"))
    assert job_id_of(await waiter or "") == "late"


async def test_a_multi_queue_claim_leaves_no_blocked_waiter_behind(queue: RedisQueue, raw: aioredis.Redis) -> None:
    waiter = asyncio.create_task(queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=30))
    while int((await raw.info("clients"))["blocked_clients"]) < 2:
        await asyncio.sleep(0.01)  # both queues are being waited on at once
    await queue.push(SDXL_QUEUE, message("first"))
    assert job_id_of(await waiter or "") == "first"
    # The other queue's waiter was woken: a message pushed now stays for whoever claims next.
    assert int((await raw.info("clients"))["blocked_clients"]) == 0
    await queue.push(WAN_QUEUE, message("later"))
    assert await raw.lrange(WAN_QUEUE, 0, -1) == [message("later")]


async def test_messages_arriving_on_both_queues_at_once_are_each_claimed_once(queue: RedisQueue,
                                                                               raw: aioredis.Redis) -> None:
    claimed: list[str] = []
    for round_number in range(20):
        waiter = asyncio.create_task(queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=30))
        while int((await raw.info("clients"))["blocked_clients"]) < 2:
            await asyncio.sleep(0.001)
        async with raw.pipeline(transaction=True) as pipe:  # both arrive in the same instant
            pipe.lpush(SDXL_QUEUE, message(f"s{round_number}"))
            pipe.lpush(WAN_QUEUE, message(f"w{round_number}"))
            await pipe.execute()
        claimed.append(job_id_of(await waiter or "") or "")
        while (extra := await queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=0.05)) is not None:
            claimed.append(job_id_of(extra) or "")
    assert sorted(claimed) == sorted([f"s{i}" for i in range(20)] + [f"w{i}" for i in range(20)])
    assert len(await raw.lrange(keys.processing_list("w1"), 0, -1)) == 40  # all held, none lost


@pytest.mark.parametrize("queues", [[SDXL_QUEUE], [SDXL_QUEUE, WAN_QUEUE]], ids=["one", "two"])
async def test_claim_on_empty_queues_returns_none_after_the_timeout(queue: RedisQueue, queues: list[str]) -> None:
    assert await queue.claim(queues, "w1", timeout=0.1) is None
    assert await queue.held("w1") == []


async def test_claim_longer_than_the_socket_timeout_is_not_an_outage(redis_url: str) -> None:
    # A worker blocks for longer than the client's socket timeout: that must end in None, not in a
    # socket timeout reported as "Redis is down" (while Redis may still move a message nobody reads).
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=1.0)
    queue = RedisQueue(client, QUEUES)
    try:
        assert await queue.claim([SDXL_QUEUE], "w1", timeout=1.2) is None
    finally:
        await queue.aclose()


async def test_push_front_is_consumed_next(queue: RedisQueue) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    await queue.push(SDXL_QUEUE, message("b"))
    await queue.push_front(SDXL_QUEUE, message("back"))
    order = [job_id_of(await queue.claim([SDXL_QUEUE], "w1", timeout=1) or "") for _ in range(3)]
    assert order == ["back", "a", "b"]


async def test_heartbeat_makes_a_worker_live_and_retire_makes_it_dead(queue: RedisQueue) -> None:
    await queue.heartbeat("w1", [SDXL_QUEUE], ttl=60)
    await queue.heartbeat("w2", [WAN_QUEUE], ttl=60)
    assert await queue.live_workers() == ["w1", "w2"]
    assert await queue.dead_workers() == []
    await queue.retire("w1")
    assert await queue.live_workers() == ["w2"]
    assert await queue.dead_workers() == ["w1"]


async def test_a_heartbeat_that_expires_makes_the_worker_dead(queue: RedisQueue) -> None:
    await queue.heartbeat("w1", [SDXL_QUEUE], ttl=0.001)
    while "w1" in await queue.live_workers():  # Redis expires the key after 1 ms
        await asyncio.sleep(0.005)
    assert await queue.dead_workers() == ["w1"]


async def test_heartbeat_records_the_workers_queues_with_a_ttl(queue: RedisQueue, raw: aioredis.Redis) -> None:
    await queue.heartbeat("w1", [SDXL_QUEUE, WAN_QUEUE], ttl=30)
    assert await raw.get(keys.heartbeat("w1")) == "sdxl_queue,wan_queue"
    assert 0 < await raw.pttl(keys.heartbeat("w1")) <= 30_000


async def test_forget_keeps_a_dead_worker_until_its_processing_list_is_empty(queue: RedisQueue) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    payload = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert payload is not None
    assert await queue.dead_workers() == ["w1"]  # it never sent a heartbeat
    await queue.forget("w1")
    assert await queue.dead_workers() == ["w1"]  # still holds a message: not forgotten
    await queue.ack("w1", payload)
    await queue.forget("w1")
    assert await queue.dead_workers() == []


async def test_job_ids_covers_the_queues_and_the_processing_lists(queue: RedisQueue, raw: aioredis.Redis) -> None:
    await queue.push(SDXL_QUEUE, message("sdxl-waiting"))
    await queue.push(WAN_QUEUE, message("wan-waiting"))
    await queue.push(WAN_QUEUE, message("wan-claimed"))
    await queue.push(WAN_QUEUE, "not json")  # ignored, not an error
    await queue.heartbeat("w1", [WAN_QUEUE], ttl=60)
    assert job_id_of(await queue.claim([WAN_QUEUE], "w1", timeout=1) or "") == "wan-waiting"
    await raw.lpush("some_other_list", message("elsewhere"))
    assert await queue.job_ids() == {"sdxl-waiting", "wan-waiting", "wan-claimed"}


async def test_concurrent_claimers_never_get_the_same_message(queue: RedisQueue) -> None:
    ids, results = await drain_concurrently(queue, timeout=0.05)
    claimed = [job_id_of(p) for batch in results for p in batch]
    assert sorted(claimed, key=str) == sorted(ids)  # every message exactly once
    for n, batch in enumerate(results):
        assert await queue.held(f"w{n}") == list(reversed(batch))


async def test_every_operation_reports_an_unreachable_redis_as_unavailable() -> None:
    queue = RedisQueue.from_url(f"redis://127.0.0.1:{free_port()}/0", QUEUES)
    try:
        with pytest.raises(QueueUnavailable):
            await queue.ping()
        with pytest.raises(QueueUnavailable):
            await queue.push(SDXL_QUEUE, message("a"))
        with pytest.raises(QueueUnavailable):
            await queue.depth(SDXL_QUEUE)
        with pytest.raises(QueueUnavailable):
            await queue.claim([SDXL_QUEUE], "w1", timeout=0.1)
        with pytest.raises(QueueUnavailable):
            await queue.heartbeat("w1", [SDXL_QUEUE], ttl=5)
        with pytest.raises(QueueUnavailable):
            await queue.job_ids()
    finally:
        await queue.aclose()


def test_job_id_of_reads_only_our_messages() -> None:
    assert job_id_of(message("x")) == "x"
    assert job_id_of("not json") is None
    assert job_id_of("[1, 2]") is None
    assert job_id_of(json.dumps({"id": 5})) is None


async def test_a_cancellation_turned_into_a_connection_error_still_cancels(queue: RedisQueue) -> None:
    """A task cancelled mid-command whose Redis call ends in a connection error is cancelled, not told that the
    queue is unavailable (a loop that retries on that would swallow its own cancellation)."""
    async def cancelled_mid_command() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        raise RedisConnectionError("Connection closed by server.")

    task = asyncio.create_task(queue._call(cancelled_mid_command()))
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_of_redis_calls_cancelled_at_any_moment_always_ends(queue: RedisQueue) -> None:
    """redis-py swallows some cancellations that land mid-command: the command returns as if none had come. A
    worker's heartbeat loop cancelled that way went on beating, and the worker never finished stopping."""
    async def heartbeat_loop() -> None:
        while True:
            await queue.heartbeat("w1", [SDXL_QUEUE], 3.0)  # a MULTI pipeline
            await queue.held("w1")  # a plain command

    still_running = []
    for n in range(300):  # cancellations spread over the first 3 ms, where the commands are in flight
        task = asyncio.create_task(heartbeat_loop())
        await asyncio.sleep(n * 0.00001)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if not done:
            still_running.append(n)
            if len(still_running) == 3:  # enough to show it; each one costs a second
                break
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        assert task.cancelled()
    assert still_running == []
