"""GET /api/queue-status: depth per queue, live workers and wait estimates; it answers even with Redis down."""

from __future__ import annotations

import uuid
from typing import Any

from harness import Api, serve_api
from servers import free_port

from edge_api.settings import ApiSettings
from jobs.catalog import DEFAULT_CATALOG, SDXL_QUEUE, WAN_QUEUE
from jobs.queue import job_id_of


async def queue_status(api: Api, prefix: str = "/api") -> dict[str, Any]:
    response = await api.client.get(f"{prefix}/queue-status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_queue(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {q["queue"]: q for q in status["queues"]}


async def test_an_idle_system_reports_empty_queues(api: Api) -> None:
    status = await queue_status(api)
    assert status == {
        "success": True, "queueDepth": 0, "workers": 0, "healthy": True,
        "queues": [{"queue": SDXL_QUEUE, "depth": 0, "processing": 0, "estimated_wait_seconds": 0.0},
                   {"queue": WAN_QUEUE, "depth": 0, "processing": 0, "estimated_wait_seconds": 0.0}],
    }


async def test_depth_per_queue_and_jobs_in_progress(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    for job_type in ("sdxl_image_fast", "sdxl_image_high", "sdxl_image_fast", "video_fast"):
        await api.submitted(user, job_type)
    # A worker takes one SDXL message and claims its job.
    payload = await api.state.queue.claim([SDXL_QUEUE], "gpu-0", timeout=1)
    assert payload is not None
    await api.state.queue.heartbeat("gpu-0", [SDXL_QUEUE], ttl=60)
    job_id = job_id_of(payload)
    assert job_id is not None
    assert (await api.claim(job_id, "gpu-0")).status_code == 200
    status = await queue_status(api)
    queues = by_queue(status)
    assert (queues[SDXL_QUEUE]["depth"], queues[SDXL_QUEUE]["processing"]) == (2, 1)
    assert (queues[WAN_QUEUE]["depth"], queues[WAN_QUEUE]["processing"]) == (1, 0)
    assert status["queueDepth"] == 3
    assert status["workers"] == 1


async def test_live_workers_are_counted_and_share_the_wait(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    for _ in range(2):
        await api.submitted(user, "video_high")
    video_high = DEFAULT_CATALOG["video_high"].reference_seconds
    assert by_queue(await queue_status(api))[WAN_QUEUE]["estimated_wait_seconds"] == round(2 * video_high, 1)
    for worker in ("gpu-0", "gpu-1", "gpu-2"):
        await api.state.queue.heartbeat(worker, [WAN_QUEUE], ttl=60)
    await api.state.queue.retire("gpu-2")  # stopped cleanly: not live
    status = await queue_status(api)
    assert status["workers"] == 2
    assert by_queue(status)[WAN_QUEUE]["estimated_wait_seconds"] == round(2 * video_high / 2, 1)
    assert by_queue(status)[SDXL_QUEUE]["estimated_wait_seconds"] == 0.0


async def test_the_functions_v1_prefix_and_no_token_needed(api: Api) -> None:
    assert (await queue_status(api, "/functions/v1"))["healthy"] is True


async def test_with_redis_down_it_reports_unhealthy_from_the_store(api_settings: ApiSettings, redis_url: str,
                                                                   user: uuid.UUID) -> None:
    async for api in serve_api(api_settings):
        await api.set_balance(user, 20)
        await api.submitted(user, "image_fast")
        await api.submitted(user, "sdxl_image_fast")
    settings = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async for down in serve_api(settings):  # same store, a Redis that is not there
        status = await queue_status(down)
        assert status["healthy"] is False
        assert status["workers"] == 0
        assert {q["queue"]: q["depth"] for q in status["queues"]} == {SDXL_QUEUE: 1, WAN_QUEUE: 1}
