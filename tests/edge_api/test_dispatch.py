"""Queues dispatched to a RunPod serverless endpoint: the documented requests, retries, cancels, reconciliation.

The endpoint is tests/fake_runpod.py, which checks each request against RunPod's documented form.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_runpod import API_KEY, ENDPOINT, FakeRunPod, running_runpod
from harness import Api, serve_api

from edge_api.settings import ApiSettings


@pytest.fixture
async def runpod() -> AsyncIterator[FakeRunPod]:
    async with running_runpod() as fake:
        yield fake


def dispatched_settings(settings: ApiSettings, runpod: FakeRunPod, **changes: Any) -> ApiSettings:
    return settings.model_copy(update={
        "runpod_endpoints": {"wan_queue": ENDPOINT}, "runpod_api_key": API_KEY,
        "runpod_api_url": f"{runpod.url}/v2", "sweeper_enabled": False, "outbox_grace_seconds": 0.0,
        "runpod_reconcile_seconds": 0.05, "runpod_start_timeout_seconds": 600.0, **changes})


@pytest.fixture
async def api(api_settings: ApiSettings, runpod: FakeRunPod) -> AsyncIterator[Api]:
    async for harness in serve_api(dispatched_settings(api_settings, runpod)):
        yield harness


def _runs(runpod: FakeRunPod) -> list[dict[str, Any]]:
    return [body for method, path, body in runpod.requests if path == "/run"]


async def test_a_job_of_a_dispatched_queue_is_posted_to_its_endpoint_with_its_deadlines(
        api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    response = await api.submit(user, "video_fast")
    assert response.status_code == 200, response.text
    job_id = response.json()["job"]["id"]

    [run] = _runs(runpod)
    assert runpod.problems == []
    message = run["input"]
    assert message["id"] == job_id and message["type"] == "video_fast" and message["bucket"] == "video_fast"
    assert message["config"]["frame_num"] == 81 and message["config"]["size"] == "480*832"
    # RunPod's policy is in milliseconds: the run deadline (15 min) plus a margin; the TTL covers the wait too.
    assert run["policy"]["executionTimeout"] == (900 + 60) * 1000
    assert run["policy"]["ttl"] > run["policy"]["executionTimeout"]
    row = await api.job_row(job_id)
    assert row["dispatch_id"] in runpod.jobs and row["enqueued_at"] is not None
    assert response.json()["queueLength"] == 1
    assert await api.queued_messages("wan_queue") == []  # nothing went to Redis
    status = (await api.client.get("/api/queue-status")).json()
    assert {q["queue"]: q["depth"] for q in status["queues"]}["wan_queue"] == 1


async def test_an_sdxl_job_still_goes_to_its_redis_list(api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "sdxl_image_fast")
    assert [m["id"] for m in await api.queued_messages("sdxl_queue")] == [job_id]
    assert _runs(runpod) == []


async def test_rate_limited_runs_are_retried_after_retry_after_and_dispatch_once(
        api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    runpod.refusals[:] = [429, 429]
    job_id = await api.submitted(user, "image_fast")
    assert len(_runs(runpod)) == 3
    assert len(runpod.jobs) == 1
    assert (await api.job_row(job_id))["dispatch_id"] in runpod.jobs


async def test_an_endpoint_that_stays_unreachable_refuses_the_submit_and_charges_nothing(
        api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    runpod.refusals[:] = [503] * 10
    response = await api.submit(user, "image_fast")
    assert response.status_code == 503
    assert response.json()["retryable"] is True and response.headers["retry-after"]
    assert await api.balance(user) == 5
    assert await api.job_rows(user) == []


async def test_a_canceled_job_has_its_runpod_job_canceled(api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "image_fast")
    dispatch_id = (await api.job_row(job_id))["dispatch_id"]
    response = await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert ("POST", "/cancel", {}) in runpod.requests
    assert runpod.jobs[dispatch_id].status == "CANCELLED"
    assert await api.balance(user) == 5


@pytest.mark.parametrize("ending", ["TIMED_OUT", "CANCELLED", "forgotten"])
async def test_a_queued_job_whose_runpod_job_ended_is_dispatched_again(
        api: Api, runpod: FakeRunPod, user: uuid.UUID, ending: str) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "image_fast")
    first = (await api.job_row(job_id))["dispatch_id"]
    assert await api.state.sweeper.sweep()
    assert len(_runs(runpod)) == 1, "a job RunPod still holds is left alone"

    if ending == "forgotten":
        runpod.forget(first)
    else:
        runpod.stop(first, ending)
    assert await api.state.sweeper.sweep()

    second = (await api.job_row(job_id))["dispatch_id"]
    assert second != first and runpod.jobs[second].status == "IN_QUEUE"
    assert len(_runs(runpod)) == 2


async def test_a_handed_back_job_is_dispatched_again_at_the_next_sweep(
        api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "image_fast")
    attempt = (await api.claim(job_id)).json()["attempt"]
    back = await api.callback({"job_id": job_id, "status": "queued", "attempt": attempt})
    assert back.status_code == 200
    assert await api.state.sweeper.sweep()
    assert len(_runs(runpod)) == 2
    assert (await api.job_row(job_id))["dispatch_id"] == list(runpod.jobs)[1]


async def test_a_running_job_whose_runpod_job_ended_without_a_result_runs_again_before_its_lease_ends(
        api: Api, runpod: FakeRunPod, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "image_fast")
    first = (await api.job_row(job_id))["dispatch_id"]
    assert (await api.claim(job_id, worker_id="pod-1")).status_code == 200
    runpod.jobs[first].status = "FAILED"  # the worker died; RunPod gave up on the request
    await asyncio.sleep(0.1)  # quiet for longer than runpod_reconcile_seconds

    assert await api.state.sweeper.sweep()

    row = await api.job_row(job_id)
    assert row["status"] == "queued" and row["attempts"] == 1
    assert row["dispatch_id"] != first and len(_runs(runpod)) == 2


async def test_a_job_past_its_deadline_fails_refunded_and_its_runpod_job_is_canceled(
        api_settings: ApiSettings, runpod: FakeRunPod, user: uuid.UUID) -> None:
    settings = dispatched_settings(api_settings, runpod, queue_timeout_seconds=0.01)
    async for api in serve_api(settings):
        await api.set_balance(user, 5)
        job_id = await api.submitted(user, "image_fast")
        dispatch_id = (await api.job_row(job_id))["dispatch_id"]
        assert await api.state.sweeper.sweep()
        row = await api.job_row(job_id)
        assert row["status"] == "failed" and await api.ledger_sum(job_id) == 0
        assert runpod.jobs[dispatch_id].status == "CANCELLED"


def test_endpoints_need_the_api_key_and_name_real_queues(api_settings: ApiSettings) -> None:
    with pytest.raises(ValueError, match="RUNPOD_API_KEY"):
        ApiSettings(**{**api_settings.model_dump(), "runpod_endpoints": {"wan": "x"}, "runpod_api_key": None})
    with pytest.raises(ValueError, match="unknown queues"):
        ApiSettings(**{**api_settings.model_dump(), "runpod_endpoints": {"flux": "x"}, "runpod_api_key": "k"})
    named = ApiSettings(**{**api_settings.model_dump(), "runpod_endpoints": {"wan": "x"}, "runpod_api_key": "k"})
    assert named.runpod_endpoints == {"wan_queue": "x"}


async def test_a_job_taken_by_a_worker_that_never_claims_it_is_dispatched_again(
        api_settings: ApiSettings, runpod: FakeRunPod, user: uuid.UUID) -> None:
    async for api in serve_api(dispatched_settings(api_settings, runpod, runpod_start_timeout_seconds=0.05)):
        await api.set_balance(user, 5)
        job_id = await api.submitted(user, "image_fast")
        first = (await api.job_row(job_id))["dispatch_id"]
        runpod.jobs[first].status = "IN_PROGRESS"  # taken by a worker that died loading its models
        await asyncio.sleep(0.1)
        assert await api.state.sweeper.sweep()
        row = await api.job_row(job_id)
        assert row["status"] == "queued" and row["dispatch_id"] != first
        assert runpod.jobs[first].status == "CANCELLED"
