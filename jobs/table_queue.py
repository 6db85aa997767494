"""The queue as a table in the store, for setups without Redis (the embedded SQLite mode, or Postgres alone).

Same reliable semantics as `RedisQueue`: a claim marks a row as held by the worker (Postgres skips
rows locked by a concurrent claim), an ack deletes it, and a dead worker's rows are handed back.
Consumers poll; the embedded mode has one worker, so a short poll interval costs nothing.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.db import is_sqlite, utcnow
from jobs.queue import QueueUnavailable, job_id_of
from jobs.tables import queue_messages as qm
from jobs.tables import workers


class TableQueue:
    """Messages as rows: `worker_id IS NULL` is the queue, `worker_id = w` is w's processing list."""

    def __init__(self, engine: AsyncEngine, poll_interval: float = 0.05) -> None:
        self._engine = engine
        self._poll = poll_interval

    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("select 1"))
        except (OperationalError, DBAPIError, OSError) as exc:
            raise QueueUnavailable(str(exc)) from exc

    async def push(self, queue: str, payload: str) -> int:
        job_id = job_id_of(payload) or ""
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(qm).values(queue=queue, job_id=job_id, payload=payload,
                                                    created_at=utcnow()))
            return int((await conn.execute(self._depth_query(queue))).scalar_one())

    async def push_front(self, queue: str, payload: str) -> None:
        # The smallest id is consumed first: one below the current minimum puts it at the front.
        async with self._engine.begin() as conn:
            lowest = (await conn.execute(sa.select(sa.func.min(qm.c.id)))).scalar()
            values = {"queue": queue, "job_id": job_id_of(payload) or "", "payload": payload,
                      "created_at": utcnow()}
            if lowest is not None:
                values["id"] = int(lowest) - 1
            await conn.execute(sa.insert(qm).values(**values))

    @staticmethod
    def _depth_query(queue: str) -> sa.Select[Any]:
        return sa.select(sa.func.count()).select_from(qm).where(qm.c.queue == queue, qm.c.worker_id.is_(None))

    async def depth(self, queue: str) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(self._depth_query(queue))).scalar_one())

    async def claim(self, queues: list[str], worker_id: str, timeout: float) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            payload = await self._claim_once(queues, worker_id)
            if payload is not None or loop.time() >= deadline:
                return payload
            await asyncio.sleep(min(self._poll, max(deadline - loop.time(), 0)))

    async def _claim_once(self, queues: list[str], worker_id: str) -> str | None:
        # The first non-empty queue in the worker's order, as RedisQueue does; the oldest message in it.
        priority = sa.case({name: rank for rank, name in enumerate(queues)}, value=qm.c.queue)
        oldest = (sa.select(qm.c.id).where(qm.c.queue.in_(queues), qm.c.worker_id.is_(None))
                  .order_by(priority, qm.c.id).limit(1))
        if not is_sqlite(self._engine):
            oldest = oldest.with_for_update(skip_locked=True)
        claim = (sa.update(qm).where(qm.c.id == oldest.scalar_subquery(), qm.c.worker_id.is_(None))
                 .values(worker_id=worker_id, claimed_at=utcnow()).returning(qm.c.payload))
        async with self._engine.begin() as conn:
            row = (await conn.execute(claim)).first()
        return None if row is None else str(row.payload)

    async def ack(self, worker_id: str, payload: str) -> None:
        async with self._engine.begin() as conn:
            first = (sa.select(qm.c.id).where(qm.c.worker_id == worker_id, qm.c.payload == payload)
                     .order_by(qm.c.id).limit(1).scalar_subquery())
            await conn.execute(sa.delete(qm).where(qm.c.id == first))

    async def heartbeat(self, worker_id: str, queues: list[str], ttl: float) -> None:
        expires = utcnow() + timedelta(seconds=ttl)
        async with self._engine.begin() as conn:
            updated = await conn.execute(sa.update(workers).where(workers.c.id == worker_id)
                                         .values(expires_at=expires, queues=",".join(queues)))
            if updated.rowcount == 0:
                await conn.execute(sa.insert(workers).values(id=worker_id, queues=",".join(queues),
                                                             expires_at=expires))

    async def retire(self, worker_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.update(workers).where(workers.c.id == worker_id).values(expires_at=utcnow()))

    async def live_workers(self) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(workers.c.id).where(workers.c.expires_at > utcnow())
                                      .order_by(workers.c.id))
            return [str(r.id) for r in rows]

    async def dead_workers(self) -> list[str]:
        async with self._engine.connect() as conn:
            expired = sa.select(workers.c.id).where(workers.c.expires_at <= utcnow())
            unregistered = sa.select(qm.c.worker_id).where(
                qm.c.worker_id.is_not(None), qm.c.worker_id.not_in(sa.select(workers.c.id))
            )
            rows = await conn.execute(sa.union(expired, unregistered))
            return sorted(str(r[0]) for r in rows)

    async def held(self, worker_id: str) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(qm.c.payload).where(qm.c.worker_id == worker_id).order_by(qm.c.id))
            return [str(r.payload) for r in rows]

    def stashed(self, worker_id: str) -> list[str]:
        return []  # a claim takes one row at a time

    async def forget(self, worker_id: str) -> None:
        async with self._engine.begin() as conn:
            held = (await conn.execute(sa.select(sa.func.count()).select_from(qm)
                                       .where(qm.c.worker_id == worker_id))).scalar_one()
            if held == 0:
                await conn.execute(sa.delete(workers).where(workers.c.id == worker_id))

    async def job_ids(self) -> set[str]:
        async with self._engine.connect() as conn:
            return {str(r.job_id) for r in await conn.execute(sa.select(qm.c.job_id).distinct())}

    async def pushed(self) -> dict[str, float]:
        """Nothing takes a row without holding it: every message is in `job_ids`."""
        return {}

    async def aclose(self) -> None:
        """The engine belongs to whoever opened it."""
