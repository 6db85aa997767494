"""The serverless handler under runpod-python's own tools: `--rp_serve_api`, `--test_input`, and its production
job loop, driven on loopback through the job-take, job-stop and job-done URLs the SDK reads from its
environment (tests/fake_runpod.py plays RunPod). End to end: API → dispatch → RunPod → handler → callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fake_runpod import API_KEY, ENDPOINT, FakeRunPod, running_runpod
from harness import Api, serve_api
from processes import Proc, settings_env, start_process
from servers import free_port
from worker_harness import SMALL, small_settings, take_message, wait_for_status, worker_settings

from edge_api.settings import ApiSettings
from handler.settings import WorkerSettings
from jobs.catalog import SDXL_QUEUE

pytestmark = pytest.mark.slow

# Slow enough (several seconds on a CPU) to outlast a short lease and to be stopped mid-way.
SLOW_SDXL = {**SMALL, "sdxl_image_fast": {"width": 256, "height": 256, "steps": 30}}


def _serverless_env(settings: WorkerSettings, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**settings_env(settings), "RUNPOD_LOG_LEVEL": "WARN", **(extra or {})}


@contextlib.asynccontextmanager
async def _serverless(settings: WorkerSettings, log: Path, *args: str, extra: dict[str, str] | None = None
                      ) -> AsyncIterator[Proc]:
    proc = await start_process(["-m", "handler.runpod_serverless", *args], _serverless_env(settings, extra), log)
    try:
        yield proc
    finally:
        await proc.stop(timeout=20)


async def test_rp_serve_api_runsync_and_run_then_status_complete_jobs(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 5)
    first = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    second = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"])
    port = free_port()
    async with _serverless(settings, tmp_path / "serve.log", "--rp_serve_api", "--rp_api_port", str(port)), \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as local:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await local.get("/openapi.json")).status_code == 200:
                    break
            await asyncio.sleep(0.2)
        synced = (await local.post("/runsync", json={"input": await take_message(api, SDXL_QUEUE)})).json()
        queued = (await local.post("/run", json={"input": await take_message(api, SDXL_QUEUE)})).json()
        status = (await local.post(f"/status/{queued['id']}")).json()

    assert synced["status"] == "COMPLETED", synced
    assert status["status"] == "COMPLETED", status
    for answer, job_id in ((synced, first), (status, second)):
        job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
        output = answer["output"]
        assert output["bucket"] == "sdxl_image_fast" and output["all_assets"] == job["metadata"]["all_assets"]


async def test_test_input_runs_one_job_and_exits_zero(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "image_fast")).json()["job"]["id"]
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["wan"])
    test_input = json.dumps({"input": await take_message(api, "wan_queue")})
    async with _serverless(settings, tmp_path / "test_input.log", "--test_input", test_input) as proc:
        code = await asyncio.wait_for(proc.process.wait(), 240)
    assert code == 0, (tmp_path / "test_input.log").read_text()[-2000:]
    job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
    assert len(job["assets"]) == 1


@pytest.fixture
async def runpod() -> AsyncIterator[FakeRunPod]:
    async with running_runpod() as fake:
        yield fake


@pytest.fixture
async def dispatching_api(api_settings: ApiSettings, runpod: FakeRunPod) -> AsyncIterator[Api]:
    """The API with both queues dispatched to the endpoint, a short lease and a quick sweeper."""
    settings = small_settings(api_settings, catalog_overrides=SLOW_SDXL, lease_seconds=1.5, sweeper_enabled=True,
                              sweep_interval_seconds=0.2, outbox_grace_seconds=1.0,
                              runpod_endpoints={"sdxl_queue": ENDPOINT, "wan_queue": ENDPOINT},
                              runpod_api_key=API_KEY, runpod_api_url=f"{runpod.url}/v2")
    async for harness in serve_api(settings):
        yield harness


async def _progress_seen(api: Api, user: uuid.UUID, job_id: str) -> list[int]:
    """The API's progress of a job, sampled until it ends."""
    seen = []
    while True:
        job = (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()
        if job["status"] == "processing":
            seen.append(job["progress"])
        if job["status"] in ("completed", "failed"):
            return seen
        await asyncio.sleep(0.05)


async def test_the_production_job_loop_serves_dispatched_jobs_end_to_end(
        dispatching_api: Api, runpod: FakeRunPod, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = dispatching_api
    await api.set_balance(user, 20)
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"], keepalive_seconds=0.3,
                               progress_interval_seconds=0.5)
    async with _serverless(settings, tmp_path / "loop.log", extra=runpod.env()):
        # 1. A job longer than several leases completes, and its progress moves in the API and at RunPod.
        job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        progress = await _progress_seen(api, user, job_id)
        job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
        assert job["status"] == "completed", job["error_message"]
        assert job["attempts"] == 1 and len(job["assets"]) == 6
        assert loop.time() - started > 3 * 1.5, "the job must outlast several leases to test anything"
        assert len({p for p in progress if 0 < p < 90}) >= 2, progress
        rp_job = runpod.jobs[(await api.job_row(job_id))["dispatch_id"]]
        assert rp_job.status == "COMPLETED" and rp_job.output["all_assets"] == job["metadata"]["all_assets"]
        assert rp_job.progress, "RunPod heard of the job's progress too"

        # 2. A second delivery of the finished job is refused without running.
        duplicate = await api.state.http.post(f"{runpod.url}/v2/{ENDPOINT}/run", json={
            "input": rp_job.input, "policy": {"executionTimeout": 60_000, "ttl": 60_000}},
            headers={"Authorization": f"Bearer {API_KEY}"})
        again = runpod.jobs[duplicate.json()["id"]]
        while again.status not in ("COMPLETED", "FAILED"):
            await asyncio.sleep(0.05)
        assert again.status == "FAILED" and "already completed" in again.error
        assert (await api.job_row(job_id))["attempts"] == 1

        # 3. A RunPod stop mid-job: the generation ends, the job is handed back, dispatched again, runs once.
        stopped_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
        while (await api.client.get(f"/api/jobs/{stopped_id}", headers=api.auth(user))).json()["progress"] < 10:
            await asyncio.sleep(0.05)
        first_dispatch = (await api.job_row(stopped_id))["dispatch_id"]
        runpod.stop(first_dispatch)
        job = await wait_for_status(api, user, stopped_id, {"completed", "failed"}, timeout=120)
        assert job["status"] == "completed", job["error_message"]
        assert job["attempts"] == 2 and len(job["assets"]) == 6
        row = await api.job_row(stopped_id)
        assert row["dispatch_id"] != first_dispatch
        assert runpod.jobs[first_dispatch].status == "CANCELLED" and runpod.jobs[first_dispatch].output is None
    assert runpod.problems == []
    assert await api.ledger_sum(job_id) == -1 and await api.ledger_sum(stopped_id) == -1
