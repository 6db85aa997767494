"""Turning a job row into its queue message, and pushing it (the outbox's second half)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from edge_api.dispatch import Dispatcher
from edge_api.store import Store
from jobs.catalog import Catalog, JobSpec
from jobs.db import StoreUnavailable, as_utc, utcnow
from jobs.messages import MAX_SEED, JobConfig, QueueMessage
from jobs.queue import Queue

log = logging.getLogger(__name__)


def job_config(spec: JobSpec, seed: int) -> JobConfig:
    return JobConfig(
        size=spec.size, width=spec.width, height=spec.height, sample_steps=spec.steps,
        sample_guide_scale=spec.guidance, sample_shift=spec.shift, frame_num=spec.frames, fps=spec.fps,
        num_images=spec.num_outputs, enhance_prompt=spec.enhanced, content_type=spec.content_type,
        file_extension=spec.file_extension, max_file_bytes=spec.max_file_bytes, seed=seed,
    )


class UnknownJobType(ValueError):
    """A row of a job type this catalog does not run (written by another producer): it has no message."""


def seed_of(row: dict[str, Any]) -> int:
    """The job's seed; a row written without one (by another producer) gets one drawn from its id, the same
    at every rebuild of its message, and recorded in that message."""
    seed = (row["metadata"] or {}).get("seed")
    if isinstance(seed, int | str) and str(seed).isdigit():
        return int(seed)
    return uuid.UUID(str(row["id"])).int & MAX_SEED


def build_message(row: dict[str, Any], catalog: Catalog) -> QueueMessage:
    """The message existing ourvidz workers read, from the job row (so the sweeper can rebuild it)."""
    spec = catalog.get(row["job_type"])
    if spec is None:
        raise UnknownJobType(f"job {row['id']}: {row['job_type']!r} is not a job type of this catalog")
    meta = row["metadata"] or {}
    seed = seed_of(row)
    created = as_utc(row["created_at"])
    assert created is not None
    return QueueMessage(
        id=str(row["id"]), type=spec.job_type, prompt=meta.get("prompt", ""), user_id=str(row["user_id"]),
        created_at=created, negative_prompt=meta.get("negative_prompt") if spec.negative_prompt_supported else None,
        video_id=_str_or_none(row.get("video_id")), image_id=_str_or_none(row.get("image_id")),
        project_id=_str_or_none(row.get("project_id")), model_variant=spec.model_variant, bucket=spec.bucket,
        config=job_config(spec, seed),
        metadata={"num_images": spec.num_outputs, "queue_timestamp": utcnow().timestamp(),
                  "credits": row["price"], "seed": seed, "job_type": spec.job_type},
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


async def push_job(store: Store, queue: Queue, row: dict[str, Any], catalog: Catalog,
                   dispatcher: Dispatcher | None = None) -> int:
    """Push the job's message (or dispatch it to its RunPod endpoint), then record that it was pushed;
    returns the queue's depth."""
    message = build_message(row, catalog)
    if dispatcher is not None and dispatcher.serves(row["queue"]):
        return await dispatcher.dispatch(row, message)
    # Noted as of before the push, so that the queue's own record of it (`Queue.pushed`) is never older.
    pushed_at = utcnow()
    depth = await queue.push(row["queue"], message.model_dump_json())
    try:
        await store.mark_enqueued(row["id"], pushed_at)
    except StoreUnavailable:
        # The job is queued; only the note of it is missing. The sweeper's outbox pass re-pushes a queued
        # job only when no queue holds it, so the job runs once.
        log.warning("job %s: pushed, but enqueued_at not recorded (database unavailable)", row["id"])
    return depth
