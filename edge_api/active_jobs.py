"""Each user's queued and running jobs per queue, counted on their profile row.

The count lives beside `token_balance` so that one conditional update checks the credits and the cap
together: concurrent submits by one user queue on that row's lock, and each sees the count the previous
one left (a `count(*)` of the jobs table would be read from a snapshot taken before the lock was had).
It goes up when a job is created and down when the job reaches a terminal state, in the same transaction.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.tables import active_jobs_column, profiles

NO_CAP = 2**31 - 1  # a cap of 0 in the settings: the count is still kept, so that a cap set later is right


class TooManyActiveJobs(Exception):
    def __init__(self, queue: str, cap: int) -> None:
        super().__init__(f"{cap} jobs are queued or running on {queue}")
        self.queue = queue
        self.cap = cap


def counter(queue: str) -> sa.Column[int]:
    return profiles.c[active_jobs_column(queue)]


def effective(cap: int) -> int:
    return cap if cap > 0 else NO_CAP


async def release(conn: AsyncConnection, user_id: uuid.UUID, queue: str) -> None:
    """One of the user's jobs on `queue` ended. A job that another producer inserted was never counted,
    so the count stops at zero."""
    column = counter(queue)
    await conn.execute(sa.update(profiles).where(profiles.c.id == user_id, column > 0).values({column: column - 1}))
