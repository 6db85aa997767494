"""Rows as their owners see them: jobs with progress, queue position and fetchable asset URLs."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from edge_api.state import AppState
from edge_api.transitions import Row
from jobs.catalog import Catalog
from jobs.db import as_utc
from jobs.messages import AssetView, JobSummary, JobView
from jobs.queue import QueueUnavailable
from jobs.status import JobStatus
from jobs.storage import StorageError


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def job_summary(row: Row) -> JobSummary:
    created = as_utc(row["created_at"])
    assert created is not None
    return JobSummary(id=str(row["id"]), user_id=str(row["user_id"]), job_type=row["job_type"],
                      status=JobStatus(row["status"]), created_at=created, metadata=row["metadata"])


async def asset_view(state: AppState, row: Row) -> AssetView:
    try:
        url = await state.storage.signed_url(row["bucket"], row["path"], state.settings.signed_url_seconds)
    except StorageError:
        url = ""  # the row is still worth showing; its object may have been removed out of band
    created = as_utc(row["created_at"])
    assert created is not None
    return AssetView(id=str(row["id"]), job_id=str(row["job_id"]), kind=row["kind"], bucket=row["bucket"],
                     path=row["path"], url=url, content_type=row["content_type"], size_bytes=row["size_bytes"],
                     index=row["position"], metadata=row["metadata"], created_at=created)


def wait_seconds(job_types: list[str] | dict[str, int], catalog: Catalog, workers: int,
                 running: Iterable[tuple[str, int]] = ()) -> float:
    """The expected times of the jobs ahead (a list, or counts by type) and what remains of the running ones
    (type, progress %), shared among the live workers."""
    counts = job_types if isinstance(job_types, dict) else Counter(job_types)
    total = sum(catalog.expected_seconds(t) * n for t, n in counts.items() if t in catalog)
    total += sum(catalog.expected_seconds(t) * (100 - p) / 100 for t, p in running if t in catalog)
    return round(total / max(workers, 1), 1)


async def running_on(state: AppState, queue: str) -> list[tuple[str, int]]:
    return [(t, p) for q, t, p in await state.store.running() if q == queue]


async def job_view(state: AppState, row: Row) -> JobView:
    status = JobStatus(row["status"])
    position = wait = None
    if status is JobStatus.QUEUED:
        ahead = await (state.feeder.jobs_ahead(row) if state.feeder.serves(row["queue"])
                       else state.store.jobs_ahead(row))
        position = sum(ahead.values()) + 1
        ahead[row["job_type"]] = ahead.get(row["job_type"], 0) + 1  # its own run counts in the wait
        wait = wait_seconds(ahead, state.catalog, await _live_worker_count(state),
                            await running_on(state, row["queue"]))
    asset_rows = await state.store.assets_of_job(row["id"]) if status is JobStatus.COMPLETED else []
    assets = list(await asyncio.gather(*(asset_view(state, a) for a in asset_rows)))
    created = as_utc(row["created_at"])
    assert created is not None
    return JobView(
        id=str(row["id"]), user_id=str(row["user_id"]), job_type=row["job_type"], format=row["format"],
        quality=row["quality"], model_type=row["model_type"], status=status, progress=row["progress"],
        metadata=row["metadata"], error_message=row["error_message"], attempts=row["attempts"],
        max_attempts=row["max_attempts"], created_at=created, started_at=as_utc(row["started_at"]),
        completed_at=as_utc(row["completed_at"]), project_id=_str(row["project_id"]),
        image_id=_str(row["image_id"]), video_id=_str(row["video_id"]), queue_position=position,
        estimated_wait_seconds=wait, assets=assets,
    )


async def _live_worker_count(state: AppState) -> int:
    """Live workers (the feeder's count, asked of the queue at most once a second: every queued job's view
    needs it); 0 while the queue is down, so the page still answers."""
    try:
        return await state.feeder.live_workers()
    except QueueUnavailable:
        return 0


def encode_cursor(row: Row) -> str:
    created = as_utc(row["created_at"])
    assert created is not None
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{row['id']}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for anything that is not a cursor this API gave out."""
    raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    created, _, asset_id = raw.partition("|")
    moment = datetime.fromisoformat(created)
    if moment.tzinfo is None:
        raise ValueError("cursor without a timezone")
    return moment, uuid.UUID(asset_id)


