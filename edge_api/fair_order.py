"""Fair order within a queue: each user's next job runs after everyone else's earlier ones.

The queue's Redis list stays the reference's (`sdxl_queue`, `wan_queue`; old workers still `RPOP` it), but
it holds only what the workers are about to take: one message per idle worker (live, minus the jobs
running on the queue), plus `fair_lookahead`.
Every other queued job waits in the store, which is the source of truth anyway. As the list drains (a
worker's claim, a job's end, each sweeper pass) the `Feeder` admits the next jobs in fair order and pushes
their messages.

The order is by *round*: a waiting job's round is its rank among its user's waiting jobs, plus how many
jobs that user was served meanwhile (running, admitted, or ended since the oldest waiting job arrived).
So another user's first job (round 1) goes before the second of a user whose first already ran (round 2),
and jobs of one round go by arrival. Once nothing waits, the history is forgotten.

Admission is one conditional update (`enqueued_at` set where it is still null), so two feeders racing
admit a job once; the push follows. A push that fails leaves the job admitted but in no list: the
sweeper's outbox pass pushes it again, as it does for any queued job that no queue holds (after a Redis
flush, say). Nothing is lost, and a job is admitted once, so it is pushed once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api.enqueue import UnknownJobType, build_message
from edge_api.transitions import Row
from jobs.catalog import Catalog
from jobs.db import utcnow
from jobs.queue import Queue, QueueUnavailable
from jobs.status import JobStatus
from jobs.tables import jobs

log = logging.getLogger(__name__)

QUEUED, PROCESSING = JobStatus.QUEUED.value, JobStatus.PROCESSING.value


def _ranked(queue: Any) -> sa.CTE:
    """The queue's waiting (queued, not admitted) jobs with their round."""
    waiting_here = sa.and_(jobs.c.queue == queue, jobs.c.status == QUEUED, jobs.c.enqueued_at.is_(None))
    # Jobs that ran since the oldest waiting job arrived count against their user: a job that ended a moment
    # ago was served while others waited, so its user's next job is not a first one.
    backlog_since = sa.select(sa.func.min(jobs.c.created_at)).where(waiting_here).scalar_subquery()
    served = sa.or_(jobs.c.status == PROCESSING, sa.and_(jobs.c.status == QUEUED, jobs.c.enqueued_at.is_not(None)),
                    sa.and_(jobs.c.started_at.is_not(None), jobs.c.completed_at >= backlog_since))
    active = (sa.select(jobs.c.user_id, sa.func.count().label("n")).where(jobs.c.queue == queue, served)
              .group_by(jobs.c.user_id).cte("served"))
    rank = sa.func.row_number().over(partition_by=jobs.c.user_id, order_by=(jobs.c.created_at, jobs.c.id))
    waiting = (sa.select(jobs.c.id, jobs.c.user_id, jobs.c.job_type, jobs.c.created_at, rank.label("k"))
               .where(waiting_here).cte("waiting"))
    return (sa.select(waiting.c.id, waiting.c.job_type, waiting.c.created_at,
                      (sa.func.coalesce(active.c.n, 0) + waiting.c.k).label("round"))
            .select_from(waiting.outerjoin(active, active.c.user_id == waiting.c.user_id)).cte("ranked"))


def _before(r: Any, me: Any) -> sa.ColumnElement[bool]:
    return sa.or_(r.c.round < me.c.round, sa.and_(r.c.round == me.c.round, sa.or_(
        r.c.created_at < me.c.created_at, sa.and_(r.c.created_at == me.c.created_at, r.c.id < me.c.id))))


async def admit(engine: AsyncEngine, queue: str, room: int) -> list[Row]:
    """Admit up to `room` waiting jobs of the queue, in fair order; returns their rows in that order."""
    ranked = _ranked(queue)
    order = sa.select(ranked.c.id).order_by(ranked.c.round, ranked.c.created_at, ranked.c.id).limit(room)
    async with engine.begin() as conn:
        ids = [row.id for row in await conn.execute(order)]
        if not ids:
            return []
        statement = (sa.update(jobs).where(jobs.c.id.in_(ids), jobs.c.status == QUEUED, jobs.c.enqueued_at.is_(None))
                     .values(enqueued_at=utcnow()).returning(*jobs.c))
        admitted = {row["id"]: dict(row) for row in (await conn.execute(statement)).mappings()}
    return [admitted[i] for i in ids if i in admitted]


async def readmit(engine: AsyncEngine, rows: list[Row]) -> None:
    """Rows admitted but never pushed wait again, so that their turn is not lost to the sweeper's grace."""
    async with engine.begin() as conn:
        await conn.execute(sa.update(jobs).where(jobs.c.id.in_([r["id"] for r in rows]), jobs.c.status == QUEUED)
                           .values(enqueued_at=None))


async def jobs_ahead(engine: AsyncEngine, row: Row) -> dict[str, int]:
    """How many jobs of each type run before this queued job: those admitted before it, then the waiting
    ones of earlier rounds."""
    admitted = sa.and_(jobs.c.queue == row["queue"], jobs.c.status == QUEUED, jobs.c.enqueued_at.is_not(None))
    if row["enqueued_at"] is not None:
        admitted = sa.and_(admitted, sa.or_(jobs.c.enqueued_at < row["enqueued_at"], sa.and_(
            jobs.c.enqueued_at == row["enqueued_at"], jobs.c.id < row["id"])))
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        queries = [sa.select(jobs.c.job_type, sa.func.count()).where(admitted).group_by(jobs.c.job_type)]
        if row["enqueued_at"] is None:
            ranked = _ranked(row["queue"])
            me = ranked.alias("me")
            queries.append(sa.select(ranked.c.job_type, sa.func.count())
                           .select_from(ranked.join(me, me.c.id == row["id"]))
                           .where(_before(ranked, me)).group_by(ranked.c.job_type))
        for query in queries:
            for job_type, n in await conn.execute(query):
                counts[str(job_type)] = counts.get(str(job_type), 0) + int(n)
    return counts


@dataclass(frozen=True, slots=True)
class QueueOrder:
    """A fair queue's queued jobs in the order they will run, as of `at` (monotonic seconds)."""

    at: float
    index: dict[uuid.UUID, int]
    types: list[str]

    def ahead(self, job_id: uuid.UUID) -> dict[str, int] | None:
        position = self.index.get(job_id)
        return None if position is None else dict(Counter(self.types[:position]))


async def queue_order(engine: AsyncEngine, queue: str) -> QueueOrder:
    """Admitted jobs by admission, then the waiting ones by round: two reads."""
    admitted = (sa.select(jobs.c.id, jobs.c.job_type)
                .where(jobs.c.queue == queue, jobs.c.status == QUEUED, jobs.c.enqueued_at.is_not(None))
                .order_by(jobs.c.enqueued_at, jobs.c.id))
    ranked = _ranked(queue)
    waiting = sa.select(ranked.c.id, ranked.c.job_type).order_by(ranked.c.round, ranked.c.created_at, ranked.c.id)
    async with engine.connect() as conn:
        rows = [*(await conn.execute(admitted)), *(await conn.execute(waiting))]
    return QueueOrder(time.monotonic(), {row.id: n for n, row in enumerate(rows)}, [str(row.job_type) for row in rows])


class Feeder:
    """Keeps each fair queue's list as long as its idle workers need, admitting waiting jobs in fair order."""

    WORKERS_TTL = 1.0  # seconds a count of live workers is trusted
    ORDER_TTL = 1.0  # seconds a queue's order is trusted for positions and waits
    FULL_TTL = 0.5  # seconds a list found full is trusted to be so by submits (claims and the sweeper look anew)

    def __init__(self, engine: AsyncEngine, queue: Queue, catalog: Catalog, lookahead: int,
                 queues: frozenset[str]) -> None:
        self._engine = engine
        self._queue = queue
        self._catalog = catalog
        self._lookahead = lookahead
        self.queues = queues  # the fair ones: pulled by workers (a RunPod endpoint keeps its own queue)
        self._workers: tuple[int, float] | None = None
        self._orders: dict[str, asyncio.Task[QueueOrder]] = {}
        self._full_until: dict[str, float] = {}

    def serves(self, queue: str) -> bool:
        return queue in self.queues

    async def count_waiting(self, queue: str) -> int:
        """The queue's queued jobs, admitted or waiting: its depth as users see it."""
        return await self._count(queue, QUEUED)

    async def _count(self, queue: str, status: str) -> int:
        query = sa.select(sa.func.count()).where(jobs.c.queue == queue, jobs.c.status == status)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def feed(self, queue: str, *, new_job: bool = False) -> list[Row]:
        """Admit and push what the list has room for; returns the rows pushed. QueueUnavailable if the
        queue cannot be reached (what was admitted but not pushed then waits again).

        `new_job`: a submit's feed, skipped while the list was found full a moment ago. Room appears when a
        worker takes a message, and its claim (or the sweeper, for workers that make none) feeds then.
        """
        if new_job and time.monotonic() < self._full_until.get(queue, 0.0):
            return []
        idle = max(await self.live_workers() - await self._count(queue, PROCESSING), 0)
        room = idle + self._lookahead - await self._queue.depth(queue)
        if room <= 0:
            self._full_until[queue] = time.monotonic() + self.FULL_TTL
            return []
        self._full_until.pop(queue, None)
        rows = await admit(self._engine, queue, room)
        for index, row in enumerate(rows):
            try:
                payload = build_message(row, self._catalog).model_dump_json()
            except UnknownJobType as exc:  # a foreign row: its queue deadline ends it
                log.warning("fair order skips %s", exc)
                continue
            try:
                await self._queue.push(queue, payload)
            except QueueUnavailable:
                await self._readmit_quietly(rows[index:])
                raise
        return rows

    async def jobs_ahead(self, row: Row) -> dict[str, int]:
        """The jobs of each type that run before this queued job, from the queue's order of at most ORDER_TTL
        ago (one read a second, however many clients poll); a job newer than that is looked up alone."""
        order = await self.order(row["queue"])
        ahead = order.ahead(row["id"])
        return ahead if ahead is not None else await jobs_ahead(self._engine, row)

    async def order(self, queue: str) -> QueueOrder:
        task = self._orders.get(queue)
        if task is not None and task.done() and (task.cancelled() or task.exception() is not None
                                                 or time.monotonic() - task.result().at > self.ORDER_TTL):
            task = None
        if task is None:  # one read for every caller meanwhile
            task = self._orders[queue] = asyncio.create_task(queue_order(self._engine, queue))
        return await asyncio.shield(task)

    async def _readmit_quietly(self, rows: list[Row]) -> None:
        try:
            await readmit(self._engine, rows)
        except Exception:  # the sweeper's outbox pass pushes them after its grace instead
            log.warning("could not return %d admitted jobs to the wait", len(rows), exc_info=True)

    async def live_workers(self) -> int:
        """How many workers have a live heartbeat, as of at most WORKERS_TTL ago."""
        known = self._workers
        if known is not None and time.monotonic() - known[1] < self.WORKERS_TTL:
            return known[0]
        count = len(await self._queue.live_workers())
        self._workers = (count, time.monotonic())
        return count
