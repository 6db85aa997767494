"""Accepting a job: validate, charge and insert in one transaction, then push (or undo, if the push fails)."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
import uuid

from edge_api.active_jobs import TooManyActiveJobs
from edge_api.auth import User
from edge_api.enqueue import push_job
from edge_api.errors import ApiError, unavailable
from edge_api.ledger import InsufficientCredits
from edge_api.state import AppState
from edge_api.store import IdempotencyConflict, NewJob
from edge_api.transitions import Row
from edge_api.views import job_summary
from edge_api.webhook_outbox import is_gone
from edge_api.webhook_targets import RefusedTarget, parse, resolve
from jobs.catalog import JobSpec
from jobs.messages import MAX_SEED, QueueJobRequest, QueueJobResponse
from jobs.queue import QueueUnavailable

log = logging.getLogger(__name__)

DEPTH_TTL = 0.5  # seconds a known queue depth is trusted for the queue-full check


def resolve_spec(state: AppState, job_type: str) -> JobSpec:
    spec = state.catalog.get(job_type)
    if spec is None:
        valid = ", ".join(state.catalog.job_types)
        raise ApiError(400, "Invalid job type", f"{job_type!r} is not one of: {valid}",
                       suggested_action="Choose a job type listed in details (GET /api/catalog describes each).")
    return spec


def _uuid_field(name: str, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise ApiError(400, "Invalid request", f"{name}: {value!r} is not a UUID") from exc


async def _webhook(state: AppState, request: QueueJobRequest) -> tuple[str | None, list[str] | None]:
    """The job's webhook URL and events: the request's (checked here), or the API's default, or none."""
    settings = state.settings
    events: list[str] = list(dict.fromkeys(request.webhookEvents or settings.webhook_events))
    if request.webhook is None:
        return (settings.webhook_url, events) if settings.webhook_url and settings.webhook_secret else (None, None)
    if not settings.webhook_secret:
        raise ApiError(400, "Webhooks are not configured", "this API has no webhook secret to sign deliveries with",
                       suggested_action="Set OURVIDZ_WEBHOOK_SECRET on the API, or poll the job instead.")
    try:
        url = parse(request.webhook, require_https=settings.environment == "production")
        await resolve(url, allow_private=settings.webhooks_may_reach_private_addresses)
    except RefusedTarget as exc:
        raise ApiError(400, "Invalid webhook", f"webhook: {exc}",
                       suggested_action="Give an https URL on a public host.") from exc
    if await is_gone(state.engine, request.webhook):
        raise ApiError(400, "Invalid webhook", "webhook: this URL answered 410 Gone; nothing more is sent to it",
                       suggested_action="Use another URL.")
    return request.webhook, events


def _new_job(state: AppState, user: User, request: QueueJobRequest, spec: JobSpec, key: str | None,
             webhook: tuple[str | None, list[str] | None]) -> NewJob:
    meta = request.metadata
    if not meta.prompt.strip():
        raise ApiError(400, "Invalid request", "metadata.prompt: a prompt is required",
                       suggested_action="Describe what to generate in metadata.prompt.")
    if meta.bucket is not None and meta.bucket != spec.bucket:
        raise ApiError(400, "Invalid request", f"metadata.bucket: {spec.job_type} jobs go to {spec.bucket!r}")
    extra = meta.model_extra or {}
    metadata = {
        **extra, "prompt": meta.prompt, "credits": spec.price, "bucket": spec.bucket,
        "num_images": spec.num_outputs, "job_type": spec.job_type, "model_variant": spec.model_variant,
        "seed": meta.seed if meta.seed is not None else random.getrandbits(32) & MAX_SEED,
    }
    if meta.negative_prompt and spec.negative_prompt_supported:
        metadata["negative_prompt"] = meta.negative_prompt
    request_hash = hashlib.sha256(request.model_dump_json().encode()).hexdigest() if key else None
    return NewJob(user_id=user.id, spec=spec, metadata=metadata, max_attempts=state.settings.max_attempts,
                  project_id=_uuid_field("projectId", request.projectId),
                  image_id=_uuid_field("imageId", request.imageId),
                  video_id=_uuid_field("videoId", request.videoId), idempotency_key=key, request_hash=request_hash,
                  webhook_url=webhook[0], webhook_events=webhook[1],
                  active_cap=state.settings.active_cap(spec.queue))


async def _check_queue(state: AppState, spec: JobSpec) -> None:
    depth = await _known_depth(state, spec.queue)
    if depth >= state.settings.max_queue_depth:
        state.metrics.refusals.labels("queue_full").inc()
        raise ApiError(503, "The job queue is full", f"{spec.queue} holds {depth} jobs", retryable=True,
                       suggested_action="Retry in 30 seconds.", headers={"Retry-After": "30"})


async def _known_depth(state: AppState, queue: str) -> int:
    """The queue's depth as of at most DEPTH_TTL ago: each push's answer refreshes it for free, so a
    busy API asks Redis only for the push itself; an idle one asks before the first submit."""
    known = state.recent_counts.get(queue)
    if known is not None and time.monotonic() - known[1] < DEPTH_TTL:
        return known[0]
    try:
        depth = await queue_depth(state, queue)
    except QueueUnavailable as exc:
        raise unavailable(str(exc)) from exc
    state.recent_counts[queue] = (depth, time.monotonic())
    return depth


async def submit_job(state: AppState, user: User, request: QueueJobRequest, key: str | None) -> QueueJobResponse:
    spec = resolve_spec(state, request.jobType)
    new = _new_job(state, user, request, spec, key, await _webhook(state, request))
    try:
        # A retry of an accepted job gets its answer even while the queue is full or down.
        existing = await state.store.find_by_idempotency_key(new) if key else None
        if existing is None:
            await _check_queue(state, spec)
            row, created = await state.store.create_job(new, state.settings.starting_credits)
        else:
            row, created = existing, False
    except InsufficientCredits as exc:
        raise ApiError(402, "Insufficient credits", f"{spec.job_type} costs {exc.price}; the balance is {exc.balance}",
                       suggested_action="Buy more credits or choose a cheaper job type.") from exc
    except TooManyActiveJobs as exc:
        state.metrics.refusals.labels("active_jobs").inc()
        wait = max(1, math.ceil(state.catalog.expected_seconds(spec.job_type)))
        raise ApiError(429, "Too many active jobs",
                       f"you have {exc.cap} jobs queued or running on {spec.queue}, the most allowed at once",
                       retryable=True, suggested_action=f"Wait for one to finish; retry in {wait} seconds.",
                       headers={"Retry-After": str(wait)}) from exc
    except IdempotencyConflict as exc:
        raise ApiError(409, "Idempotency-Key reused", "this key was used with another request body",
                       suggested_action="Use a new Idempotency-Key for a new job.") from exc
    depth = await (_push(state, row) if created else _depth_or_zero(state, spec))
    if created:
        state.metrics.jobs_submitted.labels(spec.job_type).inc()
    return QueueJobResponse(
        job=job_summary(row), message=f"{spec.job_type} job queued" if created else "job already queued",
        queueLength=depth, modelVariant=spec.model_variant, jobType=spec.job_type, queue=spec.queue,
        isSDXL=spec.is_sdxl,
        negativePromptSupported=spec.negative_prompt_supported,
    )


async def queue_depth(state: AppState, queue: str) -> int:
    """The jobs waiting on a queue: the queued rows of a fair or dispatched queue, else its list's length."""
    if state.feeder.serves(queue):
        return await state.feeder.count_waiting(queue)
    if state.dispatcher is not None and state.dispatcher.serves(queue):
        return await state.dispatcher.depth(queue)
    return await state.queue.depth(queue)


async def _depth_or_zero(state: AppState, spec: JobSpec) -> int:
    try:
        return await queue_depth(state, spec.queue)
    except QueueUnavailable:
        return 0


async def _push(state: AppState, row: Row) -> int:
    """Queue the new job: pushed at once, or on a fair queue, admitted when its turn comes (maybe now)."""
    queue = row["queue"]
    try:
        if state.feeder.serves(queue):
            await state.feeder.feed(queue, new_job=True)
            return await _known_depth(state, queue)
        depth = await push_job(state.store, state.queue, row, state.catalog, state.dispatcher)
        state.recent_counts[queue] = (depth, time.monotonic())
        return depth
    except QueueUnavailable as exc:
        state.recent_counts.pop(row["queue"], None)
        # Nothing half-done: the job was never shown to anyone, so it is undone. If the undo fails
        # too, the sweeper's outbox pass pushes the job later, and an Idempotency-Key retry finds it.
        undone = await state.store.discard_unpushed(row["id"])
        log.warning("job %s: push failed (%s); undone=%s", row["id"], exc, undone)
        raise unavailable(str(exc)) from exc


def request_key(header: str | None) -> str | None:
    if header is None:
        return None
    if not 1 <= len(header) <= 200:
        raise ApiError(400, "Invalid Idempotency-Key", "it must be 1 to 200 characters")
    return header


