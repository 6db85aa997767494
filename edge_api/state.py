"""The API's resources, opened in the lifespan and closed at shutdown: no globals, no import-time connections."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api.auth import Authenticator, JwksCache
from edge_api.callbacks import CallbackProcessor
from edge_api.dispatch import Dispatcher
from edge_api.fair_order import Feeder
from edge_api.metrics import Metrics
from edge_api.rate_limits import RateLimiter, RedisCounters, TableCounters
from edge_api.runpod import RunPodClient
from edge_api.settings import ApiSettings
from edge_api.store import Store
from edge_api.sweeper import Sweeper
from jobs.cancel import cancel_and_wait
from jobs.catalog import QUEUES, Catalog
from jobs.db import create_sqlite_schema, is_sqlite, open_engine
from jobs.queue import Queue, RedisQueue
from jobs.storage import Storage
from jobs.table_queue import TableQueue


@dataclass
class AppState:
    settings: ApiSettings
    catalog: Catalog
    engine: AsyncEngine
    store: Store
    queue: Queue
    storage: Storage
    auth: Authenticator
    callbacks: CallbackProcessor
    sweeper: Sweeper
    metrics: Metrics
    http: httpx.AsyncClient
    limiter: RateLimiter
    feeder: Feeder
    dispatcher: Dispatcher | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Counts that may be a moment old (queue depths, live workers): name → (count, monotonic time known).
    recent_counts: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def aclose(self) -> None:
        for task in self.tasks:
            await cancel_and_wait(task)
        await self.queue.aclose()
        await self.limiter.aclose()
        await self.storage.aclose()
        await self.http.aclose()
        await self.store.hot.aclose()
        await self.engine.dispose()


async def open_state(settings: ApiSettings) -> AppState:
    catalog = settings.catalog
    engine = open_engine(settings.database_url, pool_size=settings.database_pool_size)
    if is_sqlite(engine):
        await create_sqlite_schema(engine)
    store = await Store.open(engine, settings.database_pool_size)
    queue: Queue = (RedisQueue.from_url(settings.redis_url, QUEUES) if settings.redis_url
                    else TableQueue(engine))
    http = httpx.AsyncClient()
    dispatcher = None
    if settings.runpod_endpoints and settings.runpod_api_key:
        dispatcher = Dispatcher(engine, RunPodClient(settings.runpod_api_key, http, settings.runpod_api_url),
                                settings.runpod_endpoints, job_timeout=settings.job_timeout_seconds,
                                queue_timeout=settings.queue_timeout_seconds,
                                reconcile_after=settings.runpod_reconcile_seconds,
                                start_timeout=settings.runpod_start_timeout_seconds)
    fair = frozenset(q for q in QUEUES if settings.fair_lookahead and not (dispatcher and dispatcher.serves(q)))
    feeder = Feeder(engine, queue, catalog, settings.fair_lookahead, fair)
    jwks = JwksCache(settings.jwks_url, http, settings.jwks_cache_seconds) if settings.jwks_url else None
    return AppState(
        settings=settings, catalog=catalog, engine=engine, store=store, queue=queue,
        # Without a configured secret (development), local URLs are signed with a per-process secret.
        storage=settings.open_storage(settings.files_secret or secrets.token_hex(32), settings.public_base_url),
        auth=Authenticator(settings.jwt_audience, settings.jwt_secret, jwks),
        callbacks=CallbackProcessor(engine, catalog, settings.lease_seconds),
        sweeper=Sweeper(engine, queue, catalog, job_timeout=settings.job_timeout_seconds,
                        queue_timeout=settings.queue_timeout_seconds, outbox_grace=settings.outbox_grace_seconds,
                        interval=settings.sweep_interval_seconds, store=store, dispatcher=dispatcher,
                        feeder=feeder),
        metrics=Metrics(), http=http, dispatcher=dispatcher, feeder=feeder,
        limiter=RateLimiter(RedisCounters.from_url(settings.redis_url) if settings.redis_url
                            else TableCounters(engine)),
    )
