"""The serverless handler runs the job lifecycle in-process: a queue message in, callbacks and uploads out.

The RunPod SDK calls `handle` and cancels its task on a stop; these tests do the same, without the SDK
(tests/handler/test_runpod_tools.py drives the SDK's own tools).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import Api, serve_api
from worker_harness import SMALL, small_settings, take_message, wait_for_status, worker_settings

from edge_api.settings import ApiSettings
from handler.runpod_serverless import ServerlessWorker
from handler.settings import WorkerSettings
from jobs.catalog import SDXL_QUEUE, WAN_QUEUE

pytestmark = pytest.mark.slow

SLOW_SDXL = {**SMALL, "sdxl_image_fast": {"width": 256, "height": 256, "steps": 30}}


@pytest.fixture
async def serverless(tmp_path: Path) -> AsyncIterator[list[ServerlessWorker]]:
    started: list[ServerlessWorker] = []
    yield started
    for worker in started:
        await worker.models.stop(timeout=1)


def _worker(settings: WorkerSettings, reports: list[str], started: list[ServerlessWorker]) -> ServerlessWorker:
    worker = ServerlessWorker(settings, lambda request, progress: reports.append(progress))
    started.append(worker)
    return worker


async def test_the_serverless_handler_completes_a_job_from_its_queue_message(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path,
        serverless: list[ServerlessWorker]) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "video_fast")).json()["job"]["id"]
    reports: list[str] = []
    worker = _worker(worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["wan"]), reports, serverless)

    output = await worker.handle({"id": "runpod-request-1", "input": await take_message(api, WAN_QUEUE)})

    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed", job["error_message"]
    assert output["status"] == "completed" and output["bucket"] == "video_fast"
    assert output["primary_asset"] == job["metadata"]["primary_asset"] == output["all_assets"][0]
    assert reports and all(r.endswith("%") for r in reports)


async def test_a_second_delivery_of_a_finished_job_is_refused_without_running(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path,
        serverless: list[ServerlessWorker]) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    message = await take_message(api, SDXL_QUEUE)
    worker = _worker(worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"]), [], serverless)
    first = await worker.handle({"id": "delivery-1", "input": message})
    assert first["status"] == "completed"

    second = await worker.handle({"id": "delivery-2", "input": message})

    assert second["status"] == "dropped" and "already completed" in second["error"]
    job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
    assert job["attempts"] == 1 and len(job["assets"]) == 6
    assert worker.models.restarts == 0


@pytest.fixture
async def short_lease_api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    settings = small_settings(api_settings, catalog_overrides=SLOW_SDXL, lease_seconds=1.5, sweeper_enabled=True,
                              sweep_interval_seconds=0.2)
    async for harness in serve_api(settings):
        yield harness


async def test_a_job_longer_than_its_lease_completes_because_keepalives_extend_it(
        short_lease_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path,
        serverless: list[ServerlessWorker]) -> None:
    api = short_lease_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"], keepalive_seconds=0.3,
                               progress_interval_seconds=10.0)
    worker = _worker(settings, [], serverless)
    message = await take_message(api, SDXL_QUEUE)
    loop = asyncio.get_running_loop()
    started = loop.time()

    output = await worker.handle({"id": "long-1", "input": message})

    assert loop.time() - started > 3 * 1.5, "the job must outlast several leases to test anything"
    assert output["status"] == "completed", output
    job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
    assert job["attempts"] == 1


async def test_a_stop_mid_job_ends_the_generation_hands_the_job_back_and_it_then_runs_once(
        short_lease_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path,
        serverless: list[ServerlessWorker]) -> None:
    api = short_lease_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    worker = _worker(worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"]), [], serverless)
    message = await take_message(api, SDXL_QUEUE)
    request = asyncio.create_task(worker.handle({"id": "stopped-1", "input": message}))
    while (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()["progress"] < 10:
        await asyncio.sleep(0.05)

    request.cancel()  # what the SDK does on a RunPod cancel or execution timeout
    with pytest.raises(asyncio.CancelledError):
        await request

    # The generation has ended before the handler returned: the model process is free at once.
    assert not worker.busy
    job = (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()
    assert job["status"] == "queued" and job["attempts"] == 1
    output = await worker.handle({"id": "again-1", "input": message})
    assert output["status"] == "completed"
    job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
    assert job["attempts"] == 2 and len(job["assets"]) == 6
    assert worker.models.restarts == 0


async def test_a_request_stopped_while_the_models_load_leaves_the_load_to_the_next_request(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path,
        serverless: list[ServerlessWorker]) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    worker = _worker(worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"]), [], serverless)
    message = await take_message(api, SDXL_QUEUE)
    first = asyncio.create_task(worker.handle({"id": "early-stop", "input": message}))
    await asyncio.sleep(0.2)  # the model process is still loading
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    output = await asyncio.wait_for(worker.handle({"id": "next", "input": message}), 120)

    assert output["status"] == "completed", output
    job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
    assert job["attempts"] == 1
