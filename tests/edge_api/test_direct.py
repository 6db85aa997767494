"""The hot path's statements run by asyncpg directly give what the engine gives, on a real Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api.direct import EngineRunner, PoolRunner, Prepared
from edge_api.store import ASSETS_OF_JOB, JOB_OF_USER, JOBS_AHEAD, MARK_ENQUEUED
from jobs.db import open_engine, utcnow
from jobs.tables import jobs, profiles


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(postgres_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def runners(engine: AsyncEngine) -> AsyncIterator[tuple[PoolRunner, EngineRunner]]:
    pool = await PoolRunner.open(engine, 2)
    yield pool, EngineRunner(engine.execution_options(isolation_level="AUTOCOMMIT"))
    await pool.aclose()


def job_values(user: uuid.UUID, status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "user_id": user, "job_type": "image_fast", "format": "image", "quality": "fast",
            "model_type": "wan", "status": status, "metadata": {"prompt": "a cat", "seed": 7, "nested": [1, "x"]},
            "queue": "wan_queue", "price": 1, "created_at": utcnow(), "updated_at": utcnow(), **extra}


async def insert_jobs(engine: AsyncEngine, *rows: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.insert(jobs), list(rows))


async def test_a_job_row_reads_the_same_through_asyncpg_and_the_engine(
        engine: AsyncEngine, runners: tuple[PoolRunner, EngineRunner], user: uuid.UUID) -> None:
    row = job_values(user, image_id=uuid.uuid4())
    await insert_jobs(engine, row)
    pool, through_engine = runners
    params = {"p_id": row["id"], "p_user_id": user}
    direct = await pool.rows(JOB_OF_USER, params)
    assert direct == await through_engine.rows(JOB_OF_USER, params)
    assert direct[0]["metadata"] == row["metadata"]
    assert direct[0]["image_id"] == row["image_id"] and direct[0]["created_at"] == row["created_at"]


async def test_another_users_job_is_not_found_directly(
        engine: AsyncEngine, runners: tuple[PoolRunner, EngineRunner], user: uuid.UUID) -> None:
    row = job_values(user)
    await insert_jobs(engine, row)
    assert await runners[0].rows(JOB_OF_USER, {"p_id": row["id"], "p_user_id": uuid.uuid4()}) == []


async def test_a_value_written_into_a_statement_keeps_it_when_run_directly(
        engine: AsyncEngine, runners: tuple[PoolRunner, EngineRunner], user: uuid.UUID) -> None:
    # JOBS_AHEAD counts `status == 'queued'` only: that literal must reach Postgres as 'queued'.
    start = utcnow()
    earlier = [job_values(user, created_at=start + timedelta(seconds=i)) for i in range(3)]
    running = job_values(user, status="processing", created_at=start)
    mine = job_values(user, created_at=start + timedelta(seconds=10))
    await insert_jobs(engine, *earlier, running, mine)
    params = {"p_queue": "wan_queue", "p_created_at": mine["created_at"], "p_id": mine["id"]}
    pool, through_engine = runners
    assert await pool.rows(JOBS_AHEAD, params) == [{"job_type": "image_fast", "n": 3}]
    assert await through_engine.rows(JOBS_AHEAD, params) == [{"job_type": "image_fast", "n": 3}]


async def test_a_statement_without_returning_runs_and_gives_no_rows(
        engine: AsyncEngine, runners: tuple[PoolRunner, EngineRunner], user: uuid.UUID) -> None:
    row = job_values(user)
    await insert_jobs(engine, row)
    assert await runners[0].rows(MARK_ENQUEUED, {"p_id": row["id"], "p_at": utcnow()}) == []
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(jobs.c.enqueued_at))).scalar_one() is not None
    assert await runners[0].rows(ASSETS_OF_JOB, {"p_job_id": row["id"]}) == []


async def test_a_constraint_violation_run_directly_is_sqlalchemys_integrity_error(
        runners: tuple[PoolRunner, EngineRunner], user: uuid.UUID) -> None:
    insert = Prepared(sa.insert(profiles).values(id=sa.bindparam("p_id"), token_balance=sa.bindparam("p_balance")))
    await runners[0].rows(insert, {"p_id": user, "p_balance": 1})
    with pytest.raises(sa.exc.IntegrityError):
        await runners[0].rows(insert, {"p_id": user, "p_balance": 1})
    with pytest.raises(sa.exc.IntegrityError):  # the balance check constraint
        await runners[0].rows(insert, {"p_id": uuid.uuid4(), "p_balance": -1})


def test_a_missing_parameter_is_named() -> None:
    with pytest.raises(KeyError, match="p_user_id"):
        JOB_OF_USER.args({"p_id": uuid.uuid4()})
