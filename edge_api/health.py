"""Liveness, readiness (store and queue reachable), Prometheus metrics, and the local storage's file route."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from edge_api.deps import State
from edge_api.errors import ApiError
from jobs.catalog import QUEUES
from jobs.queue import QueueUnavailable
from jobs.storage import InvalidSignature, LocalStorage, StorageError

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
async def readyz(state: State) -> JSONResponse:
    checks = {"store": await _store_ok(state), "queue": await _queue_ok(state)}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def _store_ok(state: State) -> bool:
    try:
        async with asyncio.timeout(2), state.engine.connect() as conn:
            await conn.execute(sa.text("select 1"))
    except Exception:  # any failure here means "not ready", whatever the driver raised
        return False
    return True


async def _queue_ok(state: State) -> bool:
    try:
        async with asyncio.timeout(2):
            await state.queue.ping()
    except (QueueUnavailable, TimeoutError):
        return False
    return True


USER_WAIT_QUANTILES = (0.5, 0.9, 0.99)


def quantiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank quantiles of the users' waits (0 when nobody waits)."""
    ordered = sorted(values)
    return {str(q): ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else 0.0
            for q in USER_WAIT_QUANTILES}


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    metrics = state.metrics
    for job_type, status, count in await state.store.counts_by_type_and_status():
        metrics.jobs.labels(job_type, status).set(count)
    waits = await state.store.user_waits()
    for queue in QUEUES:
        for quantile, seconds in quantiles(waits.get(queue, [])).items():
            metrics.user_wait.labels(queue, quantile).set(seconds)
    try:
        for queue in QUEUES:
            metrics.queue_depth.labels(queue).set(await state.queue.depth(queue))
        metrics.workers.set(len(await state.queue.live_workers()))
    except QueueUnavailable:
        pass  # the last known values stay; /readyz reports the outage
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/api/files/{bucket}/{path:path}", tags=["assets"], include_in_schema=False)
async def serve_file(bucket: str, path: str, state: State, expires: int = Query(), signature: str = Query()
                     ) -> FileResponse:
    """Objects of the local storage, for URLs it signed."""
    storage = state.storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "Not found", "files are served by Supabase Storage in this deployment")
    try:
        target = storage.verify(bucket, path, expires, signature)
    except InvalidSignature as exc:
        raise ApiError(403, "Invalid or expired link", str(exc), suggested_action="Fetch a fresh URL.") from exc
    except (StorageError, ValueError) as exc:
        raise ApiError(404, "Not found", str(exc)) from exc
    return FileResponse(target)
