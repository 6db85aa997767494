"""Helpers for the worker's tests: small catalogs, worker settings that match an API, and waiting on jobs."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from harness import Api

from edge_api.settings import ApiSettings
from handler.settings import WorkerSettings

# Real frame counts and fps, tiny sizes and few steps: what the end-to-end tests can afford on a CPU.
SMALL = {
    "*": {"steps": 2},
    "sdxl_image_fast": {"width": 64, "height": 64},
    "sdxl_image_high": {"width": 64, "height": 64},
    **{t: {"width": 64, "height": 48} for t in ("image_fast", "image_high", "image7b_fast_enhanced",
                                              "image7b_high_enhanced", "video_fast", "video_high",
                                              "video7b_fast_enhanced", "video7b_high_enhanced")},
}


def small_settings(settings: ApiSettings, **changes: Any) -> ApiSettings:
    return settings.model_copy(update={"catalog_overrides": SMALL, **changes})


def worker_settings(api: Api, checkpoints: Path, work_dir: Path, **changes: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "worker_id": f"w-{uuid.uuid4().hex[:8]}", "redis_url": api.settings.redis_url, "api_url": api.url,
        "callback_secret": api.settings.callback_secret, "storage": "local", "storage_dir": api.settings.storage_dir,
        "checkpoints_dir": checkpoints, "work_dir": work_dir, "heartbeat_ttl_seconds": 3.0,
        "progress_interval_seconds": 0.0, "claim_timeout_seconds": 0.2, "retry_base_seconds": 0.05,
        "callback_deadline_seconds": 60.0,
    }
    values.update(changes)
    return WorkerSettings(**values)


async def wait_for_status(api: Api, user: uuid.UUID, job_id: str, statuses: set[str], timeout: float = 120.0
                          ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))
        job: dict[str, Any] = response.json()
        if job.get("status") in statuses:
            return job
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s")
        await asyncio.sleep(0.05)


async def take_message(api: Api, queue: str) -> dict[str, Any]:
    """The message a RunPod endpoint would be handed: what the API pushed, taken off its queue."""
    payload = await api.state.queue.claim([queue], "runpod-test", timeout=1)
    assert payload is not None
    await api.state.queue.ack("runpod-test", payload)
    message: dict[str, Any] = json.loads(payload)
    return message
