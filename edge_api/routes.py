"""The routes of the reference (and what it lacks), thin: each validates, calls one service, shapes the answer."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edge_api.deps import ByAddress, CurrentUser, State
from edge_api.errors import ApiError, not_found
from edge_api.submit import queue_depth, request_key, submit_job
from edge_api.views import asset_view, decode_cursor, encode_cursor, job_view, wait_seconds
from edge_api.webhook_outbox import log_of
from jobs.catalog import QUEUES
from jobs.db import as_utc, utcnow
from jobs.messages import (
    AssetPage,
    CallbackAccepted,
    ErrorEnvelope,
    JobCallback,
    JobView,
    QueueDepth,
    QueueJobRequest,
    QueueJobResponse,
    QueueStatus,
    WebhookLog,
)
from jobs.queue import QueueUnavailable
from jobs.status import JobStatus
from jobs.storage import ObjectNotFound, StorageError
from jobs.webhooks import BadSignature, verify

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 402, 404, 409, 413, 422, 429, 503)
}

router = APIRouter(responses=ERRORS)


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise not_found("Job") from exc


# Read from the request rather than as a `Header()` parameter (which FastAPI re-inspects on every request),
# and documented here instead.
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 200},
    "description": "Any 1-200 characters. A retry with the same key and body gets the first job back, never a "
                   "second one; the same key with another body is a 409.",
}


@router.post("/queue-job", response_model=QueueJobResponse, tags=["jobs"],
             openapi_extra={"parameters": [IDEMPOTENCY_KEY]})
async def queue_job(body: QueueJobRequest, user: CurrentUser, state: State, request: Request) -> QueueJobResponse:
    """Charge the job's credits, record it and queue it (the reference's `queue-job`)."""
    return await submit_job(state, user, body, request_key(request.headers.get("idempotency-key")))


@router.get("/jobs", response_model=list[JobView], tags=["jobs"])
async def list_jobs(user: CurrentUser, state: State, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    status: JobStatus | None = None) -> list[JobView]:
    rows = await state.store.list_jobs(user.id, limit, status.value if status else None)
    return list(await asyncio.gather(*(job_view(state, r) for r in rows)))


@router.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"])
async def get_job(job_id: str, user: CurrentUser, state: State) -> JobView:
    row = await state.store.get_job(_job_id(job_id), user.id)
    if row is None:
        raise not_found("Job")
    return await job_view(state, row)


@router.get("/jobs/{job_id}/webhooks", response_model=WebhookLog, tags=["jobs"])
async def job_webhooks(job_id: str, user: CurrentUser, state: State) -> WebhookLog:
    """The job's webhook deliveries, oldest first, with every try: its status code, or why there was none."""
    key = _job_id(job_id)
    if await state.store.get_job(key, user.id) is None:
        raise not_found("Job")
    return WebhookLog(job_id=str(key), deliveries=await log_of(state.engine, key))


@router.post("/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"])
async def cancel_job(job_id: str, user: CurrentUser, state: State) -> JobView:
    """Cancel a queued job and refund it; a running job cannot be canceled."""
    key = _job_id(job_id)
    row = await state.store.get_job(key, user.id)
    if row is None:
        raise not_found("Job")
    canceled = await state.store.cancel(key)
    if canceled is None:
        current = await state.store.get_job(key, user.id)
        status = current["status"] if current else "gone"
        raise ApiError(409, f"Job is {status}", "only a queued job can be canceled")
    if state.dispatcher is not None:
        await state.dispatcher.cancel(canceled)
    return await job_view(state, canceled)


@router.get("/assets", response_model=AssetPage, tags=["assets"])
async def list_assets(user: CurrentUser, state: State, limit: Annotated[int, Query(ge=1, le=100)] = 24,
                      cursor: Annotated[str | None, Query(max_length=200)] = None,
                      kind: Literal["image", "video"] | None = None) -> AssetPage:
    try:
        before = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise ApiError(400, "Invalid cursor", "use the next_cursor of a previous page") from exc
    rows = await state.store.list_assets(user.id, limit + 1, kind, before)
    page = rows[:limit]
    views = list(await asyncio.gather(*(asset_view(state, r) for r in page)))
    return AssetPage(assets=views, next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None)


@router.delete("/assets/{asset_id}", tags=["assets"])
async def delete_asset(asset_id: str, user: CurrentUser, state: State) -> dict[str, Any]:
    """Delete the stored object, then the row."""
    try:
        key = uuid.UUID(asset_id)
    except ValueError as exc:
        raise not_found("Asset") from exc
    row = await state.store.get_asset(key, user.id)
    if row is None:
        raise not_found("Asset")
    try:
        await state.storage.delete(row["bucket"], row["path"])
    except ObjectNotFound:
        pass  # already gone from storage: removing the row finishes the job
    except StorageError as exc:
        raise ApiError(503, "Storage is unavailable", str(exc), retryable=True,
                       headers={"Retry-After": "5"}) from exc
    await state.store.delete_asset(key, user.id)
    return {"success": True, "deleted": str(key)}


@router.get("/queue-status", response_model=QueueStatus, tags=["queue"], dependencies=[ByAddress])
async def queue_status(state: State) -> QueueStatus:
    """Depth per queue, live workers and wait estimates; answers (unhealthy) when the queue is down."""
    pending = await state.store.pending_by_queue()
    running = await state.store.running()
    healthy = True
    try:
        workers = len(await state.queue.live_workers())
        depths = {q: await queue_depth(state, q) for q in QUEUES}
    except QueueUnavailable:
        healthy, workers = False, 0
        depths = {q: len(pending.get((q, "queued"), [])) for q in QUEUES}
    queues = [QueueDepth(queue=q, depth=d, processing=len(pending.get((q, "processing"), [])),
                         estimated_wait_seconds=wait_seconds(pending.get((q, "queued"), []), state.catalog, workers,
                                                             [(t, p) for rq, t, p in running if rq == q]))
              for q, d in depths.items()]
    return QueueStatus(queueDepth=sum(depths.values()), queues=queues, workers=workers, healthy=healthy)


@router.post("/job-callback", response_model=CallbackAccepted, tags=["worker"])
async def job_callback(request: Request, state: State) -> JSONResponse:
    """The worker's signed report (Standard Webhooks); idempotent by `webhook-id`, fenced by `attempt`.

    Existing ourvidz workers sign nothing: they send `Authorization: Bearer <service-role key>`. Such a
    report is accepted from the service role only, and made idempotent by its content."""
    body = await request.body()
    webhook_id = await _callback_id(request, state, body)
    if not 1 <= len(webhook_id) <= 200:
        raise ApiError(400, "Invalid webhook-id", "it must be 1 to 200 characters")
    try:
        callback = JobCallback.model_validate_json(body)
    except ValidationError as exc:
        malformed = any(e["type"] == "json_invalid" for e in exc.errors())
        raise ApiError(422 if malformed else 400, "Invalid callback", str(exc.errors()[:3])) from exc
    answer = await state.callbacks.apply(webhook_id, body, callback)
    if answer.ok and callback.status.is_terminal and not answer.body.get("duplicate"):
        await _observe_duration(state, answer.body["job_id"])
    await _remove_orphans(state, answer.orphans)
    if answer.moved_from is not None:
        await _after_move(state, answer.moved_from, JobStatus(answer.body["status"]))
    return JSONResponse(answer.body, status_code=answer.status_code)


async def _after_move(state: State, before: dict[str, Any], now: JobStatus) -> None:
    """A claim, an end or a hand-back makes room on the job's queue: admit the next job in fair order."""
    if before["status"] == JobStatus.QUEUED.value and now is JobStatus.PROCESSING:
        created = as_utc(before["created_at"])
        assert created is not None
        state.metrics.queue_wait.labels(before["queue"]).observe((utcnow() - created).total_seconds())
    if state.feeder.serves(before["queue"]):
        try:
            await state.feeder.feed(before["queue"])
        except QueueUnavailable as exc:  # the sweeper's next pass feeds it
            log.warning("could not feed %s after a callback: %s", before["queue"], exc)


LEGACY_PREFIX = "legacy-"  # the webhook-id of an unsigned report: its body's digest


async def _callback_id(request: Request, state: State, body: bytes) -> str:
    """The report's `webhook-id` once its sender is known: a valid signature, or the service role."""
    if not any(name in request.headers for name in ("webhook-id", "webhook-signature", "webhook-timestamp")):
        if await state.auth.is_service(request.headers.get("authorization"), state.settings.supabase_service_key):
            return LEGACY_PREFIX + hashlib.sha256(body).hexdigest()
        raise ApiError(401, "Authentication failed", "the callback is neither signed nor from the service role",
                       suggested_action="Sign the callback with the API's OURVIDZ_CALLBACK_SECRET (Standard "
                                        "Webhooks headers), or send the project's service-role key as a bearer.")
    try:
        return verify(state.settings.callback_secret, body, request.headers)
    except BadSignature as exc:
        raise ApiError(401, "Authentication failed", f"callback signature: {exc}",
                       suggested_action="Sign the callback with the API's OURVIDZ_CALLBACK_SECRET "
                                        "(Standard Webhooks headers) and check the worker's clock.") from exc


async def _remove_orphans(state: State, orphans: tuple[tuple[str, str], ...]) -> None:
    """Files uploaded for a completion that came after the job had failed or was canceled; best effort (the
    worker gets its refusal either way)."""
    for bucket, path in orphans:
        try:
            await state.storage.delete(bucket, path)
        except StorageError as exc:
            log.warning("could not remove %s/%s, uploaded for a job that had ended: %s", bucket, path, exc)
        else:
            state.metrics.orphans_removed.inc()


async def _observe_duration(state: State, job_id: str) -> None:
    row = await state.store.get_job(uuid.UUID(job_id))
    if row is not None and row["started_at"] is not None and row["completed_at"] is not None:
        seconds = (as_utc(row["completed_at"]) - as_utc(row["started_at"])).total_seconds()  # type: ignore[operator]
        state.metrics.job_seconds.labels(row["job_type"], row["status"]).observe(seconds)
