"""The table queue (the Redis-free setups) on SQLite and on Postgres: the same reliable semantics as Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from queue_contract import drain_concurrently
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.catalog import SDXL_QUEUE, WAN_QUEUE
from jobs.db import create_sqlite_schema, open_engine
from jobs.queue import QueueUnavailable, job_id_of
from jobs.table_queue import TableQueue
from jobs.tables import queue_messages


def message(job_id: str) -> str:
    return json.dumps({"id": job_id, "type": "video_fast"})


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    url: str = request.getfixturevalue("postgres_url")  # the migrations are applied
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(database_url)
    if database_url.startswith("sqlite"):
        await create_sqlite_schema(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def queue(engine: AsyncEngine) -> TableQueue:
    return TableQueue(engine, poll_interval=0.01)


async def ids(queue: TableQueue, queues: list[str], worker: str, count: int) -> list[str | None]:
    return [job_id_of(await queue.claim(queues, worker, timeout=1) or "") for _ in range(count)]


async def test_push_returns_the_depth_of_that_queue(queue: TableQueue) -> None:
    assert await queue.push(SDXL_QUEUE, message("a")) == 1
    assert await queue.push(SDXL_QUEUE, message("b")) == 2
    assert await queue.push(WAN_QUEUE, message("c")) == 1
    assert await queue.depth(SDXL_QUEUE) == 2
    assert await queue.depth(WAN_QUEUE) == 1


async def test_claim_takes_messages_in_push_order(queue: TableQueue) -> None:
    for name in "abc":
        await queue.push(WAN_QUEUE, message(name))
    assert await ids(queue, [WAN_QUEUE], "w1", 3) == ["a", "b", "c"]


async def test_claim_moves_the_message_into_the_workers_processing_list(queue: TableQueue) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    payload = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert payload == message("a")
    assert await queue.depth(SDXL_QUEUE) == 0
    assert await queue.held("w1") == [payload]
    assert await queue.held("w2") == []


async def test_ack_removes_only_that_message(queue: TableQueue, engine: AsyncEngine) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    await queue.push(SDXL_QUEUE, message("b"))
    first = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    second = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert first is not None and second is not None
    await queue.ack("w1", first)
    assert await queue.held("w1") == [second]
    await queue.ack("w1", second)
    assert await queue.held("w1") == []
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(queue_messages))).scalar_one() == 0


async def test_multi_queue_claim_takes_the_first_non_empty_queue_in_order(queue: TableQueue) -> None:
    await queue.push(WAN_QUEUE, message("wan-1"))
    assert await ids(queue, [SDXL_QUEUE, WAN_QUEUE], "w1", 1) == ["wan-1"]
    await queue.push(WAN_QUEUE, message("wan-2"))
    await queue.push(SDXL_QUEUE, message("sdxl-1"))
    assert await ids(queue, [SDXL_QUEUE, WAN_QUEUE], "w1", 2) == ["sdxl-1", "wan-2"]
    # A worker of one queue never gets another queue's messages.
    await queue.push(WAN_QUEUE, message("wan-3"))
    assert await queue.claim([SDXL_QUEUE], "w2", timeout=0.05) is None


async def test_claim_waits_for_a_message_pushed_later(queue: TableQueue) -> None:
    waiter = asyncio.create_task(queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=30))
    await asyncio.sleep(0)
    await queue.push(WAN_QUEUE, message("late"))
    assert job_id_of(await waiter or "") == "late"


async def test_claim_on_empty_queues_returns_none_after_the_timeout(queue: TableQueue) -> None:
    assert await queue.claim([SDXL_QUEUE, WAN_QUEUE], "w1", timeout=0.05) is None
    assert await queue.held("w1") == []


async def test_push_front_is_consumed_next(queue: TableQueue) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    await queue.push(SDXL_QUEUE, message("b"))
    await queue.push_front(SDXL_QUEUE, message("back"))
    assert await ids(queue, [SDXL_QUEUE], "w1", 3) == ["back", "a", "b"]
    await queue.push_front(WAN_QUEUE, message("first-ever"))  # also on an otherwise empty queue
    await queue.push(WAN_QUEUE, message("c"))
    assert await ids(queue, [WAN_QUEUE], "w1", 2) == ["first-ever", "c"]


async def test_heartbeat_makes_a_worker_live_and_retire_makes_it_dead(queue: TableQueue) -> None:
    await queue.heartbeat("w1", [SDXL_QUEUE], ttl=60)
    await queue.heartbeat("w2", [WAN_QUEUE], ttl=60)
    await queue.heartbeat("w2", [WAN_QUEUE], ttl=60)  # a second beat renews, it does not duplicate
    assert await queue.live_workers() == ["w1", "w2"]
    assert await queue.dead_workers() == []
    await queue.retire("w1")
    assert await queue.live_workers() == ["w2"]
    assert await queue.dead_workers() == ["w1"]


async def test_an_expired_heartbeat_makes_the_worker_dead(queue: TableQueue) -> None:
    await queue.heartbeat("w1", [SDXL_QUEUE], ttl=0)
    assert await queue.live_workers() == []
    assert await queue.dead_workers() == ["w1"]
    await queue.heartbeat("w1", [SDXL_QUEUE], ttl=60)  # it came back
    assert await queue.live_workers() == ["w1"]


async def test_a_worker_that_holds_messages_without_a_heartbeat_is_dead(queue: TableQueue) -> None:
    await queue.push(SDXL_QUEUE, message("a"))
    payload = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert payload is not None
    assert await queue.dead_workers() == ["w1"]
    await queue.ack("w1", payload)
    assert await queue.dead_workers() == []


async def test_forget_keeps_a_dead_worker_until_its_messages_are_dealt_with(queue: TableQueue) -> None:
    await queue.heartbeat("w1", [SDXL_QUEUE], ttl=60)
    await queue.push(SDXL_QUEUE, message("a"))
    payload = await queue.claim([SDXL_QUEUE], "w1", timeout=1)
    assert payload is not None
    await queue.retire("w1")
    await queue.forget("w1")
    assert await queue.dead_workers() == ["w1"]
    await queue.ack("w1", payload)
    await queue.forget("w1")
    assert await queue.dead_workers() == []


async def test_job_ids_covers_the_queues_and_the_processing_lists(queue: TableQueue) -> None:
    await queue.push(SDXL_QUEUE, message("sdxl-waiting"))
    await queue.push(WAN_QUEUE, message("wan-claimed"))
    await queue.push(WAN_QUEUE, message("wan-waiting"))
    assert await ids(queue, [WAN_QUEUE], "w1", 1) == ["wan-claimed"]
    assert await queue.job_ids() == {"sdxl-waiting", "wan-claimed", "wan-waiting"}


async def test_concurrent_claimers_never_get_the_same_message(queue: TableQueue) -> None:
    job_ids, results = await drain_concurrently(queue, timeout=0)
    claimed = [job_id_of(p) for batch in results for p in batch]
    assert sorted(claimed, key=str) == sorted(job_ids)  # every message exactly once
    for n, batch in enumerate(results):
        assert sorted(await queue.held(f"w{n}")) == sorted(batch)


async def test_ping_reports_an_unreachable_store_as_unavailable(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'missing' / 'queue.db'}")  # its folder does not exist
    try:
        with pytest.raises(QueueUnavailable):
            await TableQueue(engine).ping()
    finally:
        await engine.dispose()
