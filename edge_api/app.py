"""The FastAPI application: routes under `/api/…` and `/functions/v1/…`, resources opened in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from edge_api import events, health, pages, routes
from edge_api.errors import install_handlers
from edge_api.limits import BodyLimit
from edge_api.observe import RequestMetrics
from edge_api.settings import ApiSettings
from edge_api.state import AppState, open_state
from edge_api.views import job_view
from edge_api.webhook_delivery import DeliveryPolicy, WebhookSender

log = logging.getLogger(__name__)

CORS_METHODS = ["GET", "POST", "DELETE", "OPTIONS"]
# What supabase-js and supabase-py send with `functions.invoke`, and this API's own Idempotency-Key.
CORS_HEADERS = ["authorization", "x-client-info", "apikey", "content-type", "idempotency-key"]
# What a page may read of an answer: when to retry, and its rate limits.
CORS_EXPOSED = ["Retry-After", "RateLimit", "RateLimit-Policy"]


def _webhook_sender(state: AppState) -> WebhookSender:
    async def body(row: dict[str, object]) -> bytes:
        # What the job's owner sees at `GET /api/jobs/{id}`, signed asset URLs included.
        return (await job_view(state, row)).model_dump_json().encode()

    settings = state.settings
    return WebhookSender(state.engine, DeliveryPolicy.from_settings(settings), body, state.metrics,
                         poll_seconds=settings.webhook_poll_seconds, concurrency=settings.webhook_concurrency)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await open_state(settings)
        app.state.ourvidz = state
        if settings.sweeper_enabled:
            state.tasks.append(asyncio.create_task(state.sweeper.run_forever(), name="sweeper"))
        if settings.webhook_secret:
            state.tasks.append(asyncio.create_task(_webhook_sender(state).run_forever(), name="webhooks"))
        try:
            yield
        finally:
            await state.aclose()

    # Swagger UI (/docs) and ReDoc (/redoc) from files in the package, not a CDN: they work offline.
    app = FastAPIOffline(title="ourvidz", version="0.1.0", lifespan=lifespan,
                         description="Generation jobs for AI images and videos: the ourvidz worker API.")
    install_handlers(app)
    app.include_router(routes.router, prefix="/api")
    # Supabase apps call `supabase.functions.invoke('queue-job')`; same routes, one schema entry.
    app.include_router(routes.router, prefix="/functions/v1", include_in_schema=False)
    app.include_router(health.router)
    app.include_router(events.router, prefix="/api")
    app.include_router(pages.router)
    app.add_middleware(RequestMetrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Outermost, so that every answer (a 413 or a 503 among them) carries the headers a browser needs.
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=CORS_METHODS,
                       allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, max_age=600)
    return app
