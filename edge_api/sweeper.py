"""The sweeper: one leader at a time rebuilds the queue from the store, which is the source of truth.

Each pass: hands back the messages of workers whose heartbeat expired, re-queues or fails jobs whose
lease ran out, fails jobs past their deadline (refunded), re-pushes `queued` jobs that no queue
holds (a push that never happened, or a Redis that lost its data), and tops up the fair queues' lists
(edge_api/fair_order.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api import transitions
from edge_api.dispatch import Dispatcher
from edge_api.enqueue import UnknownJobType, push_job
from edge_api.fair_order import Feeder
from edge_api.store import Store
from edge_api.transitions import Row
from jobs.catalog import Catalog
from jobs.db import as_utc, upsert, utcnow
from jobs.queue import Queue, QueueUnavailable, job_id_of
from jobs.status import JobStatus
from jobs.tables import jobs, locks

log = logging.getLogger(__name__)

LOCK_NAME = "sweeper"


def _taken(row: Row, pushed: dict[str, float]) -> bool:
    """Whether the job's last push is on the queue's record though its message is in no list: a consumer
    without a processing list took it (an old worker's `RPOP`), and pushing it again would run it twice.
    A record older than the job's last push (it was queued again since) does not count."""
    enqueued = as_utc(row["enqueued_at"])
    at = pushed.get(str(row["id"]))
    return enqueued is not None and at is not None and at >= enqueued.timestamp()


class Sweeper:
    def __init__(self, engine: AsyncEngine, queue: Queue, catalog: Catalog, *, job_timeout: float,
                 queue_timeout: float, outbox_grace: float, interval: float, owner: str | None = None,
                 store: Store | None = None, dispatcher: Dispatcher | None = None,
                 feeder: Feeder | None = None) -> None:
        self._engine = engine
        self._store = store or Store(engine)
        self._queue = queue
        self._catalog = catalog
        self._job_timeout = job_timeout
        self._queue_timeout = queue_timeout
        self._grace = outbox_grace
        self._interval = interval
        self.owner = owner or f"api-{uuid.uuid4().hex[:12]}"
        self._dispatcher = dispatcher
        self._feeder = feeder

    def _fair(self, row: Row) -> bool:
        return self._feeder is not None and self._feeder.serves(row["queue"])

    def _dispatched(self, row: Row) -> bool:
        return self._dispatcher is not None and self._dispatcher.serves(row["queue"])

    async def _push(self, row: Row) -> None:
        """A job back in the queue: pushed, or on a fair queue, waiting its turn (fed in this pass)."""
        if self._feeder is not None and self._fair(row) and row["enqueued_at"] is None:
            await self._feeder.feed(row["queue"])
            return
        try:
            await push_job(self._store, self._queue, row, self._catalog, self._dispatcher)
        except UnknownJobType as exc:  # one foreign row must not stop the pass; its queue deadline ends it
            log.warning("sweeper skips %s", exc)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad pass must not stop the sweeper; the next pass retries
                log.exception("sweep failed")
            await asyncio.sleep(self._interval)

    async def sweep(self) -> bool:
        """One pass, if this replica holds the lock; returns whether it did."""
        if not await self._take_lock():
            return False
        await self._fail_overdue()
        try:
            await self._return_dead_workers()
        except QueueUnavailable as exc:
            log.warning("sweeper cannot reach the queue: %s", exc)
        await self._expire_leases()
        try:
            await self._repush_orphans()
            await self._reconcile_dispatched()
            await self._feed()
        except QueueUnavailable as exc:
            log.warning("sweeper cannot reach the queue: %s", exc)
        return True

    async def _take_lock(self) -> bool:
        now = utcnow()
        expires = now + timedelta(seconds=max(self._interval * 3, 5.0))
        insert = upsert(self._engine, locks).values(name=LOCK_NAME, owner=self.owner, expires_at=expires)
        statement = insert.on_conflict_do_update(
            index_elements=[locks.c.name], set_={"owner": self.owner, "expires_at": expires},
            where=sa.or_(locks.c.expires_at < now, locks.c.owner == self.owner),
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    async def _fail_overdue(self) -> None:
        now = utcnow()
        running_too_long = sa.and_(jobs.c.status == JobStatus.PROCESSING.value,
                                   jobs.c.started_at < now - timedelta(seconds=self._job_timeout))
        waiting_too_long = sa.and_(jobs.c.status == JobStatus.QUEUED.value,
                                   jobs.c.created_at < now - timedelta(seconds=self._queue_timeout))
        async with self._engine.connect() as conn:
            overdue = (await conn.execute(sa.select(jobs.c.id, jobs.c.status)
                                          .where(sa.or_(running_too_long, waiting_too_long)))).all()
        failed = []
        for job_id, status in overdue:
            reason = (f"timed out after {self._job_timeout / 60:g} minutes" if status == "processing"
                      else f"no worker took the job within {self._queue_timeout / 60:g} minutes")
            # One transaction per job: a move locks the job's row, then its owner's profile (the refund, the
            # active-job count), the order every callback takes; holding several jobs at once could deadlock.
            async with self._engine.begin() as conn:
                moved = await transitions.fail(conn, job_id, [JobStatus(status)], reason)
            if moved is not None:
                log.warning("job %s failed: %s", job_id, reason)
                failed.append(moved)
        if self._dispatcher is not None:
            for row in failed:
                await self._dispatcher.cancel(row)

    async def _return_dead_workers(self) -> None:
        for worker_id in await self._queue.dead_workers():
            for payload in await self._queue.held(worker_id):
                await self._return_message(worker_id, payload)
            await self._queue.forget(worker_id)

    async def _return_message(self, worker_id: str, payload: str) -> None:
        job_id = job_id_of(payload)
        row = await self._load(job_id)
        if row is not None and row["status"] == JobStatus.PROCESSING.value and row["worker_id"] in (None, worker_id):
            async with self._engine.begin() as conn:
                row = await transitions.requeue_or_fail(conn, row, f"worker {worker_id} stopped") or row
        await self._queue.ack(worker_id, payload)
        if row is not None and row["status"] == JobStatus.QUEUED.value:
            await self._push(row)
            log.info("job %s handed back from dead worker %s", row["id"], worker_id)

    async def _load(self, job_id: str | None) -> Row | None:
        try:
            key = uuid.UUID(job_id or "")
        except ValueError:
            return None
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == key))).mappings().first()
        return None if row is None else dict(row)

    async def _expire_leases(self) -> None:
        query = sa.select(jobs).where(jobs.c.status == JobStatus.PROCESSING.value, jobs.c.lease_until < utcnow())
        async with self._engine.connect() as conn:
            expired = [dict(r) for r in (await conn.execute(query)).mappings()]
        for row in expired:
            async with self._engine.begin() as conn:
                moved = await transitions.requeue_or_fail(conn, row, "the worker's lease expired")
            if moved is None:
                continue
            log.warning("job %s: lease expired, now %s", row["id"], moved["status"])
            # The worker may be alive but hung: its heartbeat keeps the message in its processing
            # list, where the orphan pass counts it as held. Take it back and queue the job anew
            # (a late ack of the hung worker then removes nothing).
            try:
                if self._dispatcher is not None and self._dispatched(row):
                    await self._dispatcher.cancel(row)  # a hung RunPod job would only be refused later
                elif row["worker_id"] is not None:
                    for payload in await self._queue.held(row["worker_id"]):
                        if job_id_of(payload) == str(row["id"]):
                            await self._queue.ack(row["worker_id"], payload)
                if moved["status"] == JobStatus.QUEUED.value:
                    await self._push(moved)
            except QueueUnavailable as exc:  # the orphan pass pushes it once the queue is back
                log.warning("sweeper cannot reach the queue: %s", exc)

    async def _repush_orphans(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self._grace)
        query = sa.select(jobs).where(jobs.c.status == JobStatus.QUEUED.value, sa.or_(
            jobs.c.enqueued_at.is_(None) & (jobs.c.created_at < cutoff), jobs.c.enqueued_at < cutoff))
        async with self._engine.connect() as conn:
            candidates = [dict(r) for r in (await conn.execute(query)).mappings()]
        dispatched = [row for row in candidates if self._dispatched(row)]
        # On a fair queue a job never admitted is waiting its turn, not lost: the feeder pushes it.
        queued = [row for row in candidates if not self._dispatched(row)
                  and not (self._fair(row) and row["enqueued_at"] is None)]
        if self._dispatcher is not None:
            for row in dispatched:
                if await self._dispatcher.needs_dispatch(row):
                    await self._push(row)
                    log.info("job %s dispatched again: no RunPod job carries it", row["id"])
        if not queued:
            return
        held = await self._queue.job_ids()
        pushed = await self._queue.pushed()  # read after the lists: a message taken meanwhile is seen here
        for row in queued:
            if str(row["id"]) in held or _taken(row, pushed):
                continue
            await self._push(row)
            log.info("job %s re-pushed: no queue held it", row["id"])

    async def _feed(self) -> None:
        """Top up each fair queue's list: workers that `RPOP` without a claim callback drain it unseen."""
        if self._feeder is not None:
            for queue in sorted(self._feeder.queues):
                await self._feeder.feed(queue)

    async def _reconcile_dispatched(self) -> None:
        """Processing jobs whose RunPod job ended without a result get another try now, not at lease end."""
        if self._dispatcher is None:
            return
        for row, job in await self._dispatcher.lost_runs():
            moved = await self._dispatcher.requeue_lost(row, job)
            if moved is None:
                continue
            log.warning("job %s: RunPod job %s ended %s without a result; now %s", row["id"], job.id, job.status,
                        moved["status"])
            if moved["status"] == JobStatus.QUEUED.value:
                await self._push(moved)
