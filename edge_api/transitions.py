"""The job's status moves as conditional updates: a move happens only from the status the diagram allows.

`UPDATE jobs SET status = :to … WHERE id = :id AND status IN (:from…)` is the whole guard: whatever
two processes race, one wins and the other sees zero rows. Moves to `failed` and `canceled` refund in
the same transaction, and the app's webhook event for the move is recorded in it too. A move to a terminal
state frees one of the user's active-job slots on the job's queue, in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge_api import active_jobs, ledger, webhook_outbox
from jobs.db import utcnow
from jobs.messages import WebhookEvent
from jobs.status import IllegalTransition, JobStatus
from jobs.tables import jobs

Row = dict[str, Any]


async def move(conn: AsyncConnection, job_id: uuid.UUID, sources: Iterable[JobStatus], target: JobStatus,
               *, attempt: int | None = None, **values: Any) -> Row | None:
    """Move the job if it is in one of `sources` (and at `attempt`, when given); None if it was not."""
    sources = list(sources)
    for source in sources:
        if not source.can_move_to(target):
            raise IllegalTransition(source, target)
    now = utcnow()
    if target.is_terminal:
        values.setdefault("completed_at", now)
        values.setdefault("lease_until", None)
    condition = [jobs.c.id == job_id, jobs.c.status.in_([s.value for s in sources])]
    if attempt is not None:
        condition.append(jobs.c.attempts == attempt)
    statement = (sa.update(jobs).where(*condition).values(status=target.value, updated_at=now, **values)
                 .returning(*jobs.c))
    row = (await conn.execute(statement)).mappings().first()
    if row is None:
        return None
    if target.refunds:
        await ledger.refund(conn, row["user_id"], row["id"], row["price"])
    if target.is_terminal:
        await active_jobs.release(conn, row["user_id"], row["queue"])
    await webhook_outbox.record(conn, dict(row), cast(WebhookEvent, target.value))
    return dict(row)


async def claim(conn: AsyncConnection, job_id: uuid.UUID, worker_id: str | None, lease_seconds: float,
                progress: int = 0) -> Row | None:
    """queued → processing, counting the try; the returned `attempts` is the fencing token."""
    now = utcnow()
    return await move(conn, job_id, [JobStatus.QUEUED], JobStatus.PROCESSING, attempts=jobs.c.attempts + 1,
                      started_at=now, lease_until=now + timedelta(seconds=lease_seconds), worker_id=worker_id,
                      progress=progress, error_message=None)


async def fail(conn: AsyncConnection, job_id: uuid.UUID, sources: Iterable[JobStatus], error: str,
               attempt: int | None = None) -> Row | None:
    return await move(conn, job_id, sources, JobStatus.FAILED, attempt=attempt, error_message=error[:8000])


async def requeue(conn: AsyncConnection, job_id: uuid.UUID, attempt: int | None = None) -> Row | None:
    """processing → queued: the worker is gone or handed the job back; the try stays counted."""
    return await move(conn, job_id, [JobStatus.PROCESSING], JobStatus.QUEUED, attempt=attempt, worker_id=None,
                      lease_until=None, progress=0, enqueued_at=None)


async def requeue_or_fail(conn: AsyncConnection, row: Row, reason: str) -> Row | None:
    """A processing job whose worker vanished: another try if it has tries left, else failed and refunded."""
    if row["attempts"] >= row["max_attempts"]:
        return await fail(conn, row["id"], [JobStatus.PROCESSING],
                          f"{reason}; gave up after {row['attempts']} tries", attempt=row["attempts"])
    return await requeue(conn, row["id"], attempt=row["attempts"])
