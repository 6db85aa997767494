"""The app's webhook events as an outbox: recorded in the transaction of the change they report.

`record` runs inside the transaction that moves a job (edge_api/transitions.py) or creates it
(edge_api/store.py), so an event exists exactly when its change committed, whatever dies afterwards.
Deliveries of one job go out in the order of their ids: a delivery is due only when no earlier one of
its job is still pending. A claim is a conditional update that counts the try; the count fences the
result, so of two API processes only the one holding the claim records it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.db import as_utc, insert_ignoring_conflicts, utcnow
from jobs.messages import WebhookAttemptView, WebhookDeliveryView, WebhookEvent
from jobs.status import JobStatus
from jobs.tables import jobs, webhook_attempts, webhook_deliveries, webhook_gone_urls

Row = dict[str, Any]

# The job's fields that an event fixes; the rest of its body is read when it is delivered.
SNAPSHOT_FIELDS = ("status", "progress", "attempts", "error_message", "started_at", "completed_at")
_TIMES = ("started_at", "completed_at")


def wants(row: Row, event: WebhookEvent) -> bool:
    return bool(row.get("webhook_url")) and event in (row.get("webhook_events") or [])


async def record(conn: AsyncConnection, row: Row, event: WebhookEvent) -> None:
    """Add the event to the outbox if the job's webhook asks for it (in the caller's transaction)."""
    if not wants(row, event):
        return
    snapshot = {f: row.get(f) for f in SNAPSHOT_FIELDS}
    for name in _TIMES:
        moment = as_utc(snapshot[name])
        snapshot[name] = moment.isoformat() if moment is not None else None
    now = utcnow()
    await conn.execute(sa.insert(webhook_deliveries).values(
        job_id=row["id"], event=event, message_id=f"msg_{uuid.uuid4().hex}", url=row["webhook_url"],
        snapshot=snapshot, state="pending", attempts=0, next_attempt_at=now, created_at=now))


def as_of_event(job: Row, snapshot: dict[str, Any]) -> Row:
    """The job's row as it was when the event happened: its current row with the event's fields."""
    fixed = {**snapshot}
    for name in _TIMES:
        fixed[name] = datetime.fromisoformat(fixed[name]) if fixed.get(name) else None
    return {**job, **fixed}


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery: Row
    job: Row
    attempt: int  # the claim's fencing token


def _due_query(now: datetime, limit: int) -> sa.Select[Any]:
    d, e = webhook_deliveries, webhook_deliveries.alias("earlier")
    earlier_pending = sa.exists().where(e.c.job_id == d.c.job_id, e.c.state == "pending", e.c.id < d.c.id)
    # A `queued` event waits until its job is on the queue (or has moved on): a job whose push fails
    # is undone, and its event with it, before anyone hears of it.
    pushed = sa.or_(d.c.event != "queued", jobs.c.enqueued_at.is_not(None), jobs.c.status != JobStatus.QUEUED.value)
    return (sa.select(d.c.id).select_from(d.join(jobs, jobs.c.id == d.c.job_id))
            .where(d.c.state == "pending", d.c.next_attempt_at <= now,
                   sa.or_(d.c.lease_until.is_(None), d.c.lease_until < now), ~earlier_pending, pushed)
            .order_by(d.c.next_attempt_at, d.c.id).limit(limit))


async def claim_due(engine: AsyncEngine, lease_seconds: float, limit: int) -> list[Claimed]:
    """Claim up to `limit` due deliveries (the first pending one of each job) for `lease_seconds`."""
    now = utcnow()
    claimed: list[Claimed] = []
    async with engine.begin() as conn:
        ids = list((await conn.execute(_due_query(now, limit))).scalars())
        for delivery_id in ids:
            d = webhook_deliveries
            row = (await conn.execute(
                sa.update(d).where(d.c.id == delivery_id, d.c.state == "pending",
                                   sa.or_(d.c.lease_until.is_(None), d.c.lease_until < now))
                .values(attempts=d.c.attempts + 1, lease_until=now + timedelta(seconds=lease_seconds))
                .returning(*d.c))).mappings().first()
            if row is None:  # another process claimed it meanwhile
                continue
            job = (await conn.execute(sa.select(jobs).where(jobs.c.id == row["job_id"]))).mappings().one()
            claimed.append(Claimed(dict(row), dict(job), row["attempts"]))
    return claimed


@dataclass(frozen=True, slots=True)
class Attempt:
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    location: str | None = None


async def finish(engine: AsyncEngine, claimed: Claimed, attempt: Attempt | None, state: str,
                 next_attempt_at: datetime | None = None) -> bool:
    """Record a try and the delivery's new state, if the claim still holds; False if it had lapsed."""
    d = webhook_deliveries
    values: dict[str, Any] = {"state": state, "lease_until": None}
    if state == "delivered":
        values["delivered_at"] = utcnow()
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    async with engine.begin() as conn:
        updated = await conn.execute(sa.update(d).where(
            d.c.id == claimed.delivery["id"], d.c.attempts == claimed.attempt, d.c.state == "pending")
            .values(**values))
        if updated.rowcount != 1:
            return False
        if attempt is not None:
            await conn.execute(sa.insert(webhook_attempts).values(
                delivery_id=claimed.delivery["id"], started_at=attempt.started_at, duration_ms=attempt.duration_ms,
                status_code=attempt.status_code, error=attempt.error, location=attempt.location))
        if state == "gone":
            await _stop_url(conn, claimed.delivery["url"])
    return True


async def _stop_url(conn: AsyncConnection, url: str) -> None:
    """A 410 from a URL ends every delivery to it, now and later."""
    await conn.execute(insert_ignoring_conflicts(conn.engine, webhook_gone_urls).values(url=url, created_at=utcnow()))
    d = webhook_deliveries
    await conn.execute(sa.update(d).where(d.c.url == url, d.c.state == "pending").values(state="gone",
                                                                                         lease_until=None))


async def is_gone(engine: AsyncEngine, url: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(webhook_gone_urls.c.url).where(webhook_gone_urls.c.url == url))
        return found.first() is not None


async def log_of(engine: AsyncEngine, job_id: uuid.UUID) -> list[WebhookDeliveryView]:
    """Every delivery of the job with its tries, oldest first."""
    d, a = webhook_deliveries, webhook_attempts
    async with engine.connect() as conn:
        deliveries = (await conn.execute(sa.select(d).where(d.c.job_id == job_id).order_by(d.c.id))).mappings().all()
        tries = (await conn.execute(sa.select(a).join(d, d.c.id == a.c.delivery_id).where(d.c.job_id == job_id)
                                    .order_by(a.c.id))).mappings().all()
    by_delivery: dict[int, list[WebhookAttemptView]] = {}
    for t in tries:
        started = as_utc(t["started_at"])
        assert started is not None
        by_delivery.setdefault(t["delivery_id"], []).append(WebhookAttemptView(
            started_at=started, duration_ms=t["duration_ms"], status_code=t["status_code"], error=t["error"],
            location=t["location"]))
    return [_delivery_view(row, by_delivery.get(row["id"], [])) for row in deliveries]


def _delivery_view(row: Any, attempts: list[WebhookAttemptView]) -> WebhookDeliveryView:
    created = as_utc(row["created_at"])
    assert created is not None
    pending = row["state"] == "pending"
    return WebhookDeliveryView(
        webhook_id=row["message_id"], event=row["event"], url=row["url"], state=row["state"], created_at=created,
        next_attempt_at=as_utc(row["next_attempt_at"]) if pending else None,
        delivered_at=as_utc(row["delivered_at"]), attempts=attempts)
