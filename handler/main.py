"""Assembling a worker from its settings (queue, storage, callbacks, child) and running it until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from handler.callbacks import CallbackClient
from handler.child import ChildProcess
from handler.runner import ModelPaths
from handler.settings import WorkerSettings
from handler.uploader import Uploader
from handler.worker import Worker, WorkerStats
from jobs.catalog import QUEUES
from jobs.db import create_sqlite_schema, is_sqlite, open_engine
from jobs.queue import Queue, RedisQueue
from jobs.table_queue import TableQueue

log = logging.getLogger(__name__)


def model_paths(settings: WorkerSettings) -> ModelPaths:
    root = settings.checkpoints_dir
    # A single-file SDXL takes its configs, tokenizers and scheduler from the SDXL folder beside it.
    return ModelPaths(sdxl=settings.sdxl_checkpoint or root / "sdxl", wan=root / "wan", enhancer=root / "qwen",
                      sdxl_config=root / "sdxl")


async def open_queue(settings: WorkerSettings) -> tuple[Queue, AsyncEngine | None]:
    if settings.redis_url:
        return RedisQueue.from_url(settings.redis_url, QUEUES), None
    if not settings.database_url:
        raise ValueError("set OURVIDZ_REDIS_URL (Redis queue) or OURVIDZ_DATABASE_URL (table queue)")
    engine = open_engine(settings.database_url, pool_size=4)
    if is_sqlite(engine):
        await create_sqlite_schema(engine)
    return TableQueue(engine), engine


@asynccontextmanager
async def open_worker(settings: WorkerSettings) -> AsyncIterator[Worker]:
    """A worker with its queue, storage and HTTP client open; all closed on exit."""
    queue, engine = await open_queue(settings)
    # The worker only writes; signing URLs is the API's business, so any secret will do here.
    storage = settings.open_storage(secrets.token_hex(16))
    child = ChildProcess(model_paths(settings), settings.queues, settings.device,
                         build=settings.build_checkpoints, checkpoints_dir=settings.checkpoints_dir)
    try:
        async with httpx.AsyncClient() as http:
            callbacks = CallbackClient(settings.callback_url, settings.callback_secret, http,
                                       deadline=settings.callback_deadline_seconds,
                                       base_delay=settings.retry_base_seconds)
            uploader = Uploader(storage, settings.upload_attempts, settings.retry_base_seconds)
            yield Worker(settings, queue, child, callbacks, uploader)
    finally:
        await queue.aclose()
        await storage.aclose()
        if engine is not None:
            await engine.dispose()


async def run_worker(settings: WorkerSettings, burst: bool = False) -> WorkerStats:
    """Run a worker until SIGTERM/SIGINT (or, in `burst` mode, until the queues are empty)."""
    async with open_worker(settings) as worker:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        try:
            return await worker.run(burst=burst)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
