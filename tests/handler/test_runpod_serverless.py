"""The RunPod serverless entry runs the same job runner: a queue message in, uploaded assets and callbacks out."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import Api
from worker_harness import wait_for_status, worker_settings

from handler.main import model_paths
from handler.runner import JobRunner
from handler.runpod_serverless import make_handler
from jobs.catalog import WAN_QUEUE

pytestmark = pytest.mark.slow


async def test_the_serverless_handler_completes_a_job_from_its_queue_message(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "video_fast")).json()["job"]["id"]
    # RunPod hands the endpoint the message a producer would have pushed: take it off the queue.
    payload = await api.state.queue.claim([WAN_QUEUE], "runpod-test", timeout=1)
    assert payload is not None
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["wan"])
    runner = JobRunner(model_paths(settings), settings.queues, "cpu")
    reports: list[str] = []

    def report(job: dict[str, Any], progress: str) -> None:
        assert job["id"] == "runpod-request-1"
        reports.append(progress)

    handle = make_handler(runner, settings, report)
    try:
        output = await handle({"id": "runpod-request-1", "input": json.loads(payload)})
    finally:
        runner.close()

    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed", job["error_message"]
    assert output["primary_asset"] == job["metadata"]["primary_asset"] == output["all_assets"][0]
    assert reports and reports[-1] == "90%"
