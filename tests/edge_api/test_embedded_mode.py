"""The embedded deployment (`ourvidz up`): SQLite for the store and the jobs table as the queue, over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness import Api, serve_api

from edge_api.settings import ApiSettings
from jobs.catalog import SDXL_QUEUE, WAN_QUEUE
from jobs.queue import job_id_of
from jobs.tables import queue_messages


@pytest.fixture
async def embedded(api_settings: ApiSettings, tmp_path: Path) -> AsyncIterator[Api]:
    settings = api_settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'ourvidz.db'}",
                                               "redis_url": None})
    async for api in serve_api(settings):
        yield api


async def test_a_job_goes_from_submit_to_fetchable_files(embedded: Api, user: uuid.UUID) -> None:
    api = embedded
    assert (await api.client.get("/readyz")).json()["ready"] is True
    await api.set_balance(user, 5)
    submitted = await api.submit(user, "sdxl_image_fast", seed=3)
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["queueLength"] == 1
    job_id = submitted.json()["job"]["id"]

    await api.state.queue.heartbeat("cpu-0", [SDXL_QUEUE, WAN_QUEUE], ttl=60)
    payload = await api.state.queue.claim([SDXL_QUEUE, WAN_QUEUE], "cpu-0", timeout=1)
    assert payload is not None and job_id_of(payload) == job_id
    assert (await api.claim(job_id, "cpu-0")).json()["attempt"] == 1
    files = [f"{user}/{job_id}_{n}.png" for n in range(6)]
    for path in files:
        await api.state.storage.upload("sdxl_image_fast", path, path.encode(), "image/png")
    done = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1, "assets": files})
    assert done.status_code == 200, done.text
    await api.state.queue.ack("cpu-0", payload)

    view = (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()
    assert (view["status"], view["progress"]) == ("completed", 100)
    assert view["metadata"]["primary_asset"] == view["metadata"]["all_assets"][0] == files[0]
    for asset, path in zip(view["assets"], files, strict=True):
        assert (await api.client.get(asset["url"])).content == path.encode()
    page = (await api.client.get("/api/assets", params={"limit": 4}, headers=api.auth(user))).json()
    assert len(page["assets"]) == 4 and page["next_cursor"] is not None


async def test_credits_refunds_and_idempotency(embedded: Api, user: uuid.UUID) -> None:
    api = embedded
    await api.set_balance(user, 3)
    assert (await api.submit(user, "video_high")).status_code == 402
    key = {"Idempotency-Key": "once"}
    first, again = [await api.submit(user, "video_fast", headers=key) for _ in range(2)]
    assert first.json()["job"]["id"] == again.json()["job"]["id"]
    assert await api.balance(user) == 0
    canceled = await api.client.post(f"/api/jobs/{first.json()['job']['id']}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200
    assert await api.balance(user) == 3


async def test_concurrent_submits_never_overdraw(embedded: Api, user: uuid.UUID) -> None:
    api = embedded
    await api.set_balance(user, 5)
    responses = await asyncio.gather(*(api.submit(user, prompt=f"fox {n}") for n in range(12)))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [402] * 7
    assert await api.balance(user) == 0
    assert await api.state.queue.depth(SDXL_QUEUE) == 5


async def test_the_sweeper_rebuilds_a_lost_queue(embedded: Api, user: uuid.UUID) -> None:
    api = embedded
    await api.set_balance(user, 5)
    job_ids = {await api.submitted(user) for _ in range(3)}
    async with api.state.engine.begin() as conn:
        await conn.execute(sa.delete(queue_messages))
    assert await api.state.sweeper.sweep() is True
    assert await api.state.queue.job_ids() == job_ids
    await api.state.sweeper.sweep()
    assert await api.state.queue.depth(SDXL_QUEUE) == 3
