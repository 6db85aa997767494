"""The API's reads and writes of jobs and assets (SQLAlchemy Core; one code path for Postgres and SQLite).

The statements of every submit and status read are `Prepared` once and run by `self.hot` (asyncpg's pool
on Postgres, see edge_api/direct.py); the rest goes through the engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api import active_jobs, ledger, transitions, webhook_outbox
from edge_api.direct import EngineRunner, PoolRunner, Prepared, Runner
from edge_api.transitions import Row
from jobs.catalog import QUEUES, JobSpec
from jobs.db import as_utc, utcnow
from jobs.status import JobStatus
from jobs.tables import assets, credit_ledger, jobs, profiles


def _charge_and_insert(queue: str) -> sa.Insert:
    """One statement, built once per queue (its parameters are the job's columns): debit the balance if it
    covers the price and the user is under the cap, insert the job only if the debit happened, then its
    `charge` ledger row."""
    # Parameters are named `p_<column>`: a parameter named like a column would become a SET clause.
    debit = (ledger.debit_statement(sa.bindparam("p_user_id"), sa.bindparam("p_price"), queue,
                                    sa.bindparam("p_cap", type_=sa.Integer))
             .returning(profiles.c.id).cte("debit"))
    columns = [c.name for c in jobs.c if c.name not in ("enqueued_at", "lease_until", "worker_id", "started_at",
                                                        "completed_at", "error_message", "dispatch_id")]
    job_values = sa.select(*(sa.bindparam(f"p_{c}", type_=jobs.c[c].type) for c in columns)).select_from(debit)
    new_job = sa.insert(jobs).from_select(columns, job_values).returning(jobs.c.id, jobs.c.user_id).cte("new_job")
    charge = sa.select(new_job.c.user_id, new_job.c.id, sa.literal_column("'charge'"), -sa.bindparam("p_price"),
                       sa.bindparam("p_created_at", type_=credit_ledger.c.created_at.type)).select_from(new_job)
    return (sa.insert(credit_ledger).from_select(["user_id", "job_id", "kind", "amount", "created_at"], charge)
            .returning(credit_ledger.c.job_id))


MARK_ENQUEUED = Prepared(sa.update(jobs).where(jobs.c.id == sa.bindparam("p_id"))
                         .values(enqueued_at=sa.bindparam("p_at")))
CHARGE_AND_INSERT = {queue: Prepared(_charge_and_insert(queue)) for queue in QUEUES}
JOB_OF_USER = Prepared(sa.select(jobs).where(jobs.c.id == sa.bindparam("p_id"),
                                             jobs.c.user_id == sa.bindparam("p_user_id")))
JOB_BY_KEY = Prepared(sa.select(jobs).where(jobs.c.user_id == sa.bindparam("p_user_id"),
                                            jobs.c.idempotency_key == sa.bindparam("p_key")))
# How many jobs of each type are queued before a job on its queue (its position, one grouped count).
JOBS_AHEAD = Prepared(
    sa.select(jobs.c.job_type, sa.func.count().label("n")).where(
        jobs.c.queue == sa.bindparam("p_queue"), jobs.c.status == JobStatus.QUEUED.value,
        sa.or_(jobs.c.created_at < sa.bindparam("p_created_at"),
               sa.and_(jobs.c.created_at == sa.bindparam("p_created_at"), jobs.c.id < sa.bindparam("p_id"))))
    .group_by(jobs.c.job_type))
ASSETS_OF_JOB = Prepared(sa.select(assets).where(assets.c.job_id == sa.bindparam("p_job_id"))
                         .order_by(assets.c.position))


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with another request body."""


@dataclass(frozen=True, slots=True)
class NewJob:
    user_id: uuid.UUID
    spec: JobSpec
    metadata: dict[str, Any]
    max_attempts: int
    project_id: uuid.UUID | None = None
    image_id: uuid.UUID | None = None
    video_id: uuid.UUID | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    active_cap: int = 0  # the user's queued and running jobs allowed on the job's queue; 0: no cap


def job_row(new: NewJob) -> Row:
    """The new job's row: every column the insert writes."""
    spec = new.spec
    now = utcnow()
    return {
        "id": uuid.uuid4(), "user_id": new.user_id, "job_type": spec.job_type, "format": spec.output.value,
        "quality": spec.quality.value, "model_type": spec.family.value, "status": JobStatus.QUEUED.value,
        "metadata": new.metadata, "attempts": 0, "max_attempts": new.max_attempts, "created_at": now,
        "project_id": new.project_id, "image_id": new.image_id, "video_id": new.video_id,
        "queue": spec.queue, "price": spec.price, "progress": 0, "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash, "updated_at": now, "webhook_url": new.webhook_url,
        "webhook_events": new.webhook_events,
    }


class Store:
    def __init__(self, engine: AsyncEngine, hot: Runner | None = None) -> None:
        self.engine = engine
        # Reads and single statements need no BEGIN/COMMIT round trips around them.
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.hot: Runner = hot or EngineRunner(self.autocommit)

    @classmethod
    async def open(cls, engine: AsyncEngine, pool_size: int) -> Store:
        """On Postgres, the hot statements get asyncpg's pool of `pool_size`; elsewhere they use the engine."""
        hot = await PoolRunner.open(engine, pool_size) if engine.dialect.name == "postgresql" else None
        return cls(engine, hot)

    async def create_job(self, new: NewJob, starting_credits: int) -> tuple[Row, bool]:
        """Insert the job and charge for it in one transaction. Returns (row, created).

        The caller looks the Idempotency-Key up first; a concurrent request with the same key loses
        on the unique constraint here and gets the winner's job.
        """
        values = job_row(new)
        job_id, spec = values["id"], new.spec
        # A job whose webhook wants `queued` records that event in the transaction that creates it.
        in_one_statement = not webhook_outbox.wants(values, "queued")
        try:
            if not (in_one_statement and await self._charge_in_one_statement(values, new.active_cap)):
                async with self.engine.begin() as conn:
                    await conn.execute(sa.insert(jobs).values(**values))
                    await ledger.charge(conn, new.user_id, job_id, spec.price, starting_credits, spec.queue,
                                        new.active_cap)
                    await webhook_outbox.record(conn, values, "queued")
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won the unique constraint.
            if new.idempotency_key is None:
                raise
            existing = await self.find_by_idempotency_key(new)
            if existing is None:
                raise
            return existing, False
        return values, True

    async def _charge_in_one_statement(self, values: Row, cap: int) -> bool:
        """Postgres: debit, insert the job and its ledger row in one statement (one round trip, atomic).

        False when the debit matched no row (a new user, too few credits, the cap reached): the caller then
        takes the general path, which creates a first-seen profile or says what is missing.
        """
        if self.engine.dialect.name != "postgresql":
            return False
        params = {f"p_{k}": v for k, v in values.items()} | {"p_cap": active_jobs.effective(cap)}
        return bool(await self.hot.rows(CHARGE_AND_INSERT[values["queue"]], params))

    async def find_by_idempotency_key(self, new: NewJob) -> Row | None:
        """The job an earlier request with this key created; IdempotencyConflict if its body differed."""
        rows = await self.hot.rows(JOB_BY_KEY, {"p_user_id": new.user_id, "p_key": new.idempotency_key})
        if not rows:
            return None
        if rows[0]["request_hash"] != new.request_hash:
            raise IdempotencyConflict
        return rows[0]

    async def discard_unpushed(self, job_id: uuid.UUID) -> bool:
        """Undo a job whose push failed before anyone saw it: no row, no charge, balance restored."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.delete(jobs).where(
                jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value, jobs.c.enqueued_at.is_(None))
                .returning(jobs.c.user_id, jobs.c.price, jobs.c.queue))).first()
            if row is None:
                return False
            await active_jobs.release(conn, row.user_id, row.queue)
            await conn.execute(sa.delete(credit_ledger).where(credit_ledger.c.job_id == job_id))
            await conn.execute(sa.update(profiles).where(profiles.c.id == row.user_id)
                               .values(token_balance=profiles.c.token_balance + row.price))
        return True

    async def cancel(self, job_id: uuid.UUID) -> Row | None:
        """queued → canceled, refunded in the same transaction; None if the job was not queued."""
        async with self.engine.begin() as conn:
            return await transitions.move(conn, job_id, [JobStatus.QUEUED], JobStatus.CANCELED)

    async def get_job(self, job_id: uuid.UUID, user_id: uuid.UUID | None = None) -> Row | None:
        if user_id is not None:
            rows = await self.hot.rows(JOB_OF_USER, {"p_id": job_id, "p_user_id": user_id})
            return rows[0] if rows else None
        query = sa.select(jobs).where(jobs.c.id == job_id)
        async with self.autocommit.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else dict(row)

    async def list_jobs(self, user_id: uuid.UUID, limit: int, status: str | None = None) -> list[Row]:
        query = sa.select(jobs).where(jobs.c.user_id == user_id)
        if status is not None:
            query = query.where(jobs.c.status == status)
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        async with self.autocommit.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def jobs_ahead(self, row: Row) -> dict[str, int]:
        """How many jobs of each type are queued before this job on its queue (one grouped count)."""
        params = {"p_queue": row["queue"], "p_created_at": row["created_at"], "p_id": row["id"]}
        return {str(r["job_type"]): int(r["n"]) for r in await self.hot.rows(JOBS_AHEAD, params)}

    async def pending_by_queue(self) -> dict[tuple[str, str], list[str]]:
        """Job types of queued and processing jobs, by (queue, status)."""
        query = (sa.select(jobs.c.queue, jobs.c.status, jobs.c.job_type)
                 .where(jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.PROCESSING.value])))
        result: dict[tuple[str, str], list[str]] = {}
        async with self.autocommit.connect() as conn:
            for row in await conn.execute(query):
                result.setdefault((str(row.queue), str(row.status)), []).append(str(row.job_type))
        return result

    async def running(self) -> list[tuple[str, str, int]]:
        """(queue, job type, progress) of each processing job: what the workers are busy with."""
        query = (sa.select(jobs.c.queue, jobs.c.job_type, jobs.c.progress)
                 .where(jobs.c.status == JobStatus.PROCESSING.value))
        async with self.autocommit.connect() as conn:
            return [(str(q), str(t), int(p)) for q, t, p in await conn.execute(query)]

    async def user_waits(self) -> dict[str, list[float]]:
        """Per queue, how long each user with a queued job has waited: the age of their oldest queued job."""
        query = (sa.select(jobs.c.queue, sa.func.min(jobs.c.created_at))
                 .where(jobs.c.status == JobStatus.QUEUED.value).group_by(jobs.c.queue, jobs.c.user_id))
        now = utcnow()
        waits: dict[str, list[float]] = {}
        async with self.autocommit.connect() as conn:
            for queue, oldest in await conn.execute(query):
                waits.setdefault(str(queue), []).append((now - _utc(oldest)).total_seconds())
        return waits

    async def counts_by_type_and_status(self) -> list[tuple[str, str, int]]:
        query = sa.select(jobs.c.job_type, jobs.c.status, sa.func.count()).group_by(jobs.c.job_type, jobs.c.status)
        async with self.autocommit.connect() as conn:
            return [(str(t), str(s), int(n)) for t, s, n in await conn.execute(query)]

    async def assets_of_job(self, job_id: uuid.UUID) -> list[Row]:
        return await self.hot.rows(ASSETS_OF_JOB, {"p_job_id": job_id})

    async def list_assets(self, user_id: uuid.UUID, limit: int, kind: str | None,
                          before: tuple[datetime, uuid.UUID] | None) -> list[Row]:
        query = sa.select(assets).where(assets.c.user_id == user_id)
        if kind is not None:
            query = query.where(assets.c.kind == kind)
        if before is not None:
            created, asset_id = before
            query = query.where(sa.or_(assets.c.created_at < created,
                                       sa.and_(assets.c.created_at == created, assets.c.id < asset_id)))
        query = query.order_by(assets.c.created_at.desc(), assets.c.id.desc()).limit(limit)
        async with self.autocommit.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def get_asset(self, asset_id: uuid.UUID, user_id: uuid.UUID) -> Row | None:
        query = sa.select(assets).where(assets.c.id == asset_id, assets.c.user_id == user_id)
        async with self.autocommit.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else dict(row)

    async def delete_asset(self, asset_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        async with self.engine.begin() as conn:
            deleted = await conn.execute(sa.delete(assets).where(assets.c.id == asset_id, assets.c.user_id == user_id))
        return deleted.rowcount == 1

    async def mark_enqueued(self, job_id: uuid.UUID, at: datetime | None = None) -> None:
        await self.hot.rows(MARK_ENQUEUED, {"p_id": job_id, "p_at": at or utcnow()})

    async def balance(self, user_id: uuid.UUID, starting_credits: int = 0) -> int:
        async with self.autocommit.connect() as conn:
            return await ledger.balance_of(conn, user_id, starting_credits)


def _utc(value: datetime) -> datetime:
    moment = as_utc(value)
    assert moment is not None
    return moment


def created_at(row: Row) -> datetime:
    return _utc(row["created_at"])
