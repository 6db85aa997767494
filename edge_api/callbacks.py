"""Applying a worker's signed callback to its job: idempotent by `webhook-id`, fenced by the attempt number.

Each callback runs in one transaction that first records its `webhook-id` (so a concurrent replay
waits, then reads the first answer), then moves the job with a conditional update, creates the asset
rows or refunds, and stores the answer it gives. A replay gets the stored answer; the same
`webhook-id` with another body is a 409.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from edge_api import transitions
from edge_api.transitions import Row
from jobs.catalog import Catalog
from jobs.db import utcnow
from jobs.messages import CallbackAccepted, ErrorEnvelope, JobCallback
from jobs.status import JobStatus
from jobs.storage import validate_object_path
from jobs.tables import assets, callback_receipts, jobs

_ENDED_WITHOUT_ASSETS = frozenset({JobStatus.FAILED.value, JobStatus.CANCELED.value})

# Keys the API sets at submission; a worker's metadata never overwrites them.
PROTECTED_KEYS = frozenset({"prompt", "negative_prompt", "seed", "credits", "bucket", "num_images", "job_type",
                            "primary_asset", "all_assets", "callback_processed_at"})


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    body: dict[str, Any]
    # (bucket, path) of files a refused completion uploaded for a job that ended without assets (failed or
    # canceled first): nothing will ever link them, so the route removes them. Not stored with the receipt,
    # so a replay removes nothing again.
    orphans: tuple[tuple[str, str], ...] = ()
    # The job's row before the callback, when the callback moved it (claimed, ended, handed back): its queue
    # has room for the next job.
    moved_from: Row | None = None

    @property
    def ok(self) -> bool:
        return self.status_code < 300


def _refuse(status_code: int, error: str, details: str | None = None, retryable: bool = False) -> Answer:
    return Answer(status_code, ErrorEnvelope(error=error, details=details, retryable=retryable).model_dump())


def _accept(row: Row, duplicate: bool = False) -> Answer:
    body = CallbackAccepted(job_id=str(row["id"]), status=JobStatus(row["status"]), attempt=row["attempts"],
                            duplicate=duplicate)
    return Answer(200, body.model_dump(mode="json"))


class CallbackProcessor:
    def __init__(self, engine: AsyncEngine, catalog: Catalog, lease_seconds: float) -> None:
        self._engine = engine
        self._catalog = catalog
        self._lease = lease_seconds

    async def apply(self, webhook_id: str, body: bytes, callback: JobCallback) -> Answer:
        digest = hashlib.sha256(body).hexdigest()
        try:
            job_id = uuid.UUID(callback.job_id)
        except ValueError:
            return _refuse(404, "Job not found", f"{callback.job_id!r} is not a job id")
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.insert(callback_receipts).values(
                    webhook_id=webhook_id, job_id=job_id, body_sha256=digest, status_code=0, response={},
                    created_at=utcnow()))
                answer = await self._decide(conn, job_id, callback)
                # Refusals are remembered too, so a replay gets the same answer.
                await conn.execute(sa.update(callback_receipts).where(callback_receipts.c.webhook_id == webhook_id)
                                   .values(status_code=answer.status_code, response=answer.body))
            return answer
        except IntegrityError:
            return await self._replay(webhook_id, digest)

    async def _replay(self, webhook_id: str, digest: str) -> Answer:
        async with self._engine.connect() as conn:
            receipt = (await conn.execute(sa.select(callback_receipts)
                                          .where(callback_receipts.c.webhook_id == webhook_id))).mappings().first()
        if receipt is None:
            return _refuse(503, "Callback could not be recorded", retryable=True)
        if receipt["body_sha256"] != digest:
            return _refuse(409, "webhook-id reused with another body", "each callback needs its own webhook-id")
        body = dict(receipt["response"])
        if receipt["status_code"] < 300:
            body["duplicate"] = True
        return Answer(int(receipt["status_code"]), body)

    async def _decide(self, conn: AsyncConnection, job_id: uuid.UUID, cb: JobCallback) -> Answer:
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found = (await conn.execute(query)).mappings().first()
        if found is None:
            return _refuse(404, "Job not found", str(job_id))
        row = dict(found)
        answer = await self._decide_for(conn, row, cb)
        if answer.ok and answer.body.get("status") != row["status"]:
            answer = replace(answer, moved_from=row)
        if not answer.ok and cb.status is JobStatus.COMPLETED and row["status"] in _ENDED_WITHOUT_ASSETS:
            answer = replace(answer, orphans=self._orphans(row, cb))
        return answer

    def _orphans(self, row: Row, cb: JobCallback) -> tuple[tuple[str, str], ...]:
        """The callback's files that can only be this job's: valid paths under `{user_id}/{job_id}`."""
        spec = self._catalog.get(row["job_type"])
        if spec is None or _check_assets(cb, str(row["user_id"])) is not None:
            return ()
        prefix = f"{row['user_id']}/{row['id']}"
        return tuple((spec.bucket, asset.url) for asset in cb.assets if asset.url.startswith(prefix))

    async def _decide_for(self, conn: AsyncConnection, row: Row, cb: JobCallback) -> Answer:
        current = JobStatus(row["status"])
        if cb.attempt is not None and _stale(current, cb.status, cb.attempt, row["attempts"]):
            return _refuse(409, "Stale attempt", f"the callback is for attempt {cb.attempt}; "
                           f"the job is {current} at attempt {row['attempts']}")
        handler = {
            JobStatus.PROCESSING: self._processing,
            JobStatus.COMPLETED: self._completed,
            JobStatus.FAILED: self._failed,
            JobStatus.QUEUED: self._handed_back,
        }.get(cb.status)
        if handler is None:
            return _refuse(400, "Invalid callback status", f"a worker cannot report {cb.status}")
        return await handler(conn, row, cb)

    async def _claim(self, conn: AsyncConnection, row: Row, cb: JobCallback) -> Answer | Row:
        if row["attempts"] >= row["max_attempts"]:
            failed = await transitions.fail(conn, row["id"], [JobStatus.QUEUED],
                                            f"gave up after {row['attempts']} tries")
            return _refuse(409, "No tries left", f"the job is {failed['status'] if failed else row['status']}")
        claimed = await transitions.claim(conn, row["id"], cb.worker_id, self._lease, cb.progress or 0)
        if claimed is None:
            return _refuse(409, "Job is no longer queued")
        return claimed

    async def _processing(self, conn: AsyncConnection, row: Row, cb: JobCallback) -> Answer:
        current = JobStatus(row["status"])
        if current is JobStatus.QUEUED:
            claimed = await self._claim(conn, row, cb)
            return claimed if isinstance(claimed, Answer) else _accept(claimed)
        if current is not JobStatus.PROCESSING:
            return _refuse(409, f"Job is already {current}")
        if cb.attempt is None and cb.worker_id is not None and row["worker_id"] not in (None, cb.worker_id):
            return _refuse(409, "Job is held by another worker")
        progress = max(int(row["progress"]), cb.progress or 0)
        lease = utcnow() + timedelta(seconds=self._lease)
        await conn.execute(sa.update(jobs).where(jobs.c.id == row["id"], jobs.c.status == current.value)
                           .values(progress=progress, lease_until=lease, updated_at=utcnow()))
        return _accept({**row, "progress": progress})

    async def _completed(self, conn: AsyncConnection, row: Row, cb: JobCallback) -> Answer:
        spec = self._catalog.get(row["job_type"])
        if spec is None:
            return _refuse(409, "Unknown job type", row["job_type"])
        problem = _check_assets(cb, str(row["user_id"]))
        if problem is not None:
            return _refuse(400, "Invalid assets", problem)
        current = JobStatus(row["status"])
        if current is JobStatus.COMPLETED:
            return _accept(row, duplicate=True)
        if current is JobStatus.QUEUED and cb.attempt is None:
            claimed = await self._claim(conn, row, cb)  # a legacy worker that never reported processing
            if isinstance(claimed, Answer):
                return claimed
            row = claimed
        elif current is not JobStatus.PROCESSING:
            return _refuse(409, f"Job is already {current}")
        metadata = _merged_metadata(row["metadata"], cb)
        moved = await transitions.move(conn, row["id"], [JobStatus.PROCESSING], JobStatus.COMPLETED,
                                       attempt=row["attempts"], metadata=metadata, progress=100)
        if moved is None:
            return _refuse(409, "Job changed meanwhile", retryable=True)
        await conn.execute(sa.insert(assets), [
            {"id": uuid.uuid4(), "user_id": row["user_id"], "job_id": row["id"],
             "kind": asset.type or spec.output.value, "bucket": spec.bucket, "path": asset.url,
             "content_type": asset.metadata.get("content_type", spec.content_type),
             "size_bytes": asset.metadata.get("size_bytes", 0), "position": index,
             "metadata": asset.metadata, "created_at": utcnow()}
            for index, asset in enumerate(cb.assets)
        ])
        return _accept(moved)

    async def _failed(self, conn: AsyncConnection, row: Row, cb: JobCallback) -> Answer:
        current = JobStatus(row["status"])
        if current is JobStatus.FAILED:
            return _accept(row, duplicate=True)
        if current is JobStatus.QUEUED and cb.attempt is not None:
            return _refuse(409, "Job is not running")
        if current not in (JobStatus.QUEUED, JobStatus.PROCESSING):
            return _refuse(409, f"Job is already {current}")
        error = cb.error_message or "the worker reported a failure"
        moved = await transitions.fail(conn, row["id"], [current], error, attempt=cb.attempt)
        return _accept(moved) if moved is not None else _refuse(409, "Job changed meanwhile", retryable=True)

    async def _handed_back(self, conn: AsyncConnection, row: Row, cb: JobCallback) -> Answer:
        current = JobStatus(row["status"])
        if current is JobStatus.QUEUED:
            return _accept(row, duplicate=True)
        if current is not JobStatus.PROCESSING or cb.attempt is None:
            return _refuse(409, f"Job is {current}; only a running attempt can be handed back")
        moved = await transitions.requeue(conn, row["id"], attempt=cb.attempt)
        return _accept(moved) if moved is not None else _refuse(409, "Job changed meanwhile", retryable=True)


def _stale(current: JobStatus, reported: JobStatus, attempt: int, attempts: int) -> bool:
    """Whether a callback comes from an attempt that is over (the job was re-queued meanwhile)."""
    if current is not JobStatus.QUEUED:
        return attempt != attempts
    # A waiting job's last attempt is over: only a repeat of its own hand-back may still arrive.
    return attempt < attempts or (attempt == attempts and reported is not JobStatus.QUEUED)


def _check_assets(cb: JobCallback, user_id: str) -> str | None:
    if not cb.assets:
        return "a completed job needs at least one asset"
    for asset in cb.assets:
        try:
            validate_object_path(asset.url)
        except ValueError as exc:
            return f"{asset.url!r}: {exc}"
        if not asset.url.startswith(f"{user_id}/"):
            return f"{asset.url!r} is not under the job owner's folder {user_id}/"
        # What becomes a column of the asset row must fit it (a worker's typo is a 400, not a 500).
        size = asset.metadata.get("size_bytes", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"{asset.url!r}: metadata.size_bytes must be a whole number of bytes, not {size!r}"
        if not isinstance(asset.metadata.get("content_type", ""), str):
            return f"{asset.url!r}: metadata.content_type must be a string"
    return None


def _merged_metadata(metadata: dict[str, Any], cb: JobCallback) -> dict[str, Any]:
    merged = dict(metadata)
    merged.update({k: v for k, v in cb.metadata.items() if k not in PROTECTED_KEYS})
    paths = [asset.url for asset in cb.assets]
    merged["primary_asset"] = paths[0]
    merged["all_assets"] = paths
    merged["callback_processed_at"] = utcnow().isoformat()
    if cb.enhanced_prompt:
        merged["enhanced_prompt"] = cb.enhanced_prompt
    return merged
