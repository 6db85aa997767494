"""Dispatching a queue's jobs to a RunPod serverless endpoint instead of a Redis list.

A queue named in `OURVIDZ_RUNPOD_ENDPOINTS` (for example `{"wan_queue": "abc123"}`) is served by that
endpoint: a job's message becomes the input of `POST /v2/{endpoint}/run`, with RunPod's execution
timeout set from the job's running deadline and its TTL from the job's queueing deadline. RunPod's job
id is recorded on the row (`dispatch_id`). The store stays the source of truth, as with Redis:

- the handler claims the job by callback, like any worker, and the attempt number fences it: a second
  delivery (a dispatch repeated after a lost answer, RunPod's own retry) is refused without running;
- the sweeper dispatches again a `queued` job whose RunPod job ended or was forgotten (a hand-back, a
  TTL that ran out, a dispatch that never got through), and re-queues a `processing` one whose RunPod
  job ended without a result (a worker that died), without waiting for its lease;
- a job canceled by its user, or failed at its deadline, has its RunPod job canceled.

Scaling, to zero included, is RunPod's: the API only posts jobs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api import transitions
from edge_api.runpod import IN_PROGRESS, RunPodClient, RunPodError, RunPodJob
from edge_api.transitions import Row
from jobs.db import as_utc, utcnow
from jobs.messages import QueueMessage
from jobs.queue import QueueUnavailable
from jobs.status import JobStatus
from jobs.tables import jobs

log = logging.getLogger(__name__)

# RunPod's bounds on a job's policy (docs: execution policy): at least 5 s to run, at least 10 s to live.
MIN_EXECUTION_MS = 5_000
MIN_TTL_MS = 10_000
# Time on top of the job's own deadline for RunPod's start-up of a cold worker and the final upload.
EXECUTION_MARGIN_MS = 60_000


class Dispatcher:
    def __init__(self, engine: AsyncEngine, client: RunPodClient, endpoints: dict[str, str], *,
                 job_timeout: float, queue_timeout: float, reconcile_after: float, start_timeout: float) -> None:
        self._engine = engine
        self._client = client
        self.endpoints = dict(endpoints)
        self._job_timeout = job_timeout
        self._queue_timeout = queue_timeout
        self._reconcile_after = reconcile_after
        self._start_timeout = start_timeout

    def serves(self, queue: str) -> bool:
        return queue in self.endpoints

    async def dispatch(self, row: Row, message: QueueMessage) -> int:
        """Post the job to its endpoint and record RunPod's id; returns how many jobs wait on that queue."""
        endpoint = self.endpoints[row["queue"]]
        created = as_utc(row["created_at"])
        assert created is not None
        queue_left = (created + timedelta(seconds=self._queue_timeout) - utcnow()).total_seconds()
        execution_ms = max(MIN_EXECUTION_MS, int(self._job_timeout * 1000) + EXECUTION_MARGIN_MS)
        try:
            dispatch_id = await self._client.run(endpoint, message.model_dump(mode="json", exclude_none=True),
                                                 execution_timeout_ms=execution_ms,
                                                 ttl_ms=max(MIN_TTL_MS, int(queue_left * 1000) + execution_ms))
        except RunPodError as exc:
            raise QueueUnavailable(f"RunPod endpoint {endpoint}: {exc}") from exc
        async with self._engine.begin() as conn:
            await conn.execute(sa.update(jobs).where(jobs.c.id == row["id"])
                               .values(dispatch_id=dispatch_id, enqueued_at=utcnow()))
            waiting = (await conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                jobs.c.queue == row["queue"], jobs.c.status == JobStatus.QUEUED.value))).scalar_one()
        log.info("job %s: dispatched to RunPod endpoint %s as %s", row["id"], endpoint, dispatch_id)
        return int(waiting)

    async def cancel(self, row: Row) -> None:
        """Best effort: a RunPod job left running is refused at its claim, or its final callback is."""
        if not row.get("dispatch_id") or not self.serves(row["queue"]):
            return
        try:
            await self._client.cancel(self.endpoints[row["queue"]], row["dispatch_id"])
            log.info("job %s: RunPod job %s canceled", row["id"], row["dispatch_id"])
        except RunPodError as exc:
            log.warning("job %s: could not cancel RunPod job %s: %s", row["id"], row["dispatch_id"], exc)

    async def depth(self, queue: str) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                jobs.c.queue == queue, jobs.c.status == JobStatus.QUEUED.value))).scalar_one())

    async def status(self, row: Row) -> RunPodJob | None:
        try:
            return await self._client.status(self.endpoints[row["queue"]], row["dispatch_id"])
        except RunPodError as exc:
            log.warning("job %s: RunPod status of %s unknown: %s", row["id"], row["dispatch_id"], exc)
            return None

    async def needs_dispatch(self, row: Row) -> bool:
        """A queued job of a dispatched queue whose RunPod job will never claim it: ended, forgotten, or taken
        by a worker that has not claimed it within `start_timeout` (it died loading its models)."""
        if row["dispatch_id"] is None or row["enqueued_at"] is None:
            return True  # never dispatched, or handed back since
        job = await self.status(row)
        if job is None:
            return False
        if job.status in (IN_PROGRESS, "RUNNING"):
            enqueued = as_utc(row["enqueued_at"])
            assert enqueued is not None
            if (utcnow() - enqueued).total_seconds() > self._start_timeout:
                log.warning("job %s: RunPod job %s in progress for over %.0f s without a claim; dispatching again",
                            row["id"], job.id, self._start_timeout)
                await self.cancel(row)
                return True
        return job.ended

    async def lost_runs(self) -> list[tuple[Row, RunPodJob]]:
        """Processing jobs that reported nothing for a while and whose RunPod job has ended."""
        quiet = utcnow() - timedelta(seconds=self._reconcile_after)
        query = sa.select(jobs).where(jobs.c.status == JobStatus.PROCESSING.value,
                                      jobs.c.queue.in_(list(self.endpoints)), jobs.c.dispatch_id.is_not(None),
                                      jobs.c.updated_at < quiet)
        async with self._engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        statuses = await asyncio.gather(*(self.status(row) for row in rows))
        return [(row, job) for row, job in zip(rows, statuses, strict=True) if job is not None and job.ended]

    async def requeue_lost(self, row: Row, job: RunPodJob) -> Row | None:
        """Another try for a job whose RunPod job ended without its result (fenced by the attempt)."""
        reason = f"RunPod job {job.id} ended {job.status} without a result"
        async with self._engine.begin() as conn:
            return await transitions.requeue_or_fail(conn, row, reason)

