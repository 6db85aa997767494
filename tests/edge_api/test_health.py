"""Liveness, readiness, Prometheus metrics and the OpenAPI schema."""

from __future__ import annotations

import re
import uuid

from harness import Api, serve_api
from servers import free_port

from edge_api.settings import ApiSettings


async def test_healthz_answers_ok(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_checks_the_store_and_the_queue(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "checks": {"store": True, "queue": True}}


async def test_readyz_is_503_when_redis_is_unreachable(api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async for api in serve_api(settings):
        response = await api.client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"ready": False, "checks": {"store": True, "queue": False}}
        assert (await api.client.get("/healthz")).status_code == 200  # alive, just not ready


async def test_metrics_count_requests_jobs_and_queue_depth(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    await api.submitted(user, "sdxl_image_fast")
    await api.submitted(user, "sdxl_image_fast")
    await api.state.queue.heartbeat("gpu-0", ["sdxl_queue"], ttl=60)
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    assert 'ourvidz_jobs_submitted_total{job_type="sdxl_image_fast"} 2.0' in lines
    assert 'ourvidz_jobs{job_type="sdxl_image_fast",status="queued"} 2.0' in lines
    assert 'ourvidz_queue_depth{queue="sdxl_queue"} 2.0' in lines
    assert 'ourvidz_queue_depth{queue="wan_queue"} 0.0' in lines
    assert "ourvidz_workers_live 1.0" in lines
    # The route label is the route's template (FastAPI may leave the router's prefix out of it).
    requests = [line for line in lines if re.fullmatch(
        r'ourvidz_http_requests_total\{method="POST",route="(/api)?/queue-job",status="200"\} 2\.0', line)]
    assert len(requests) == 1


async def test_the_openapi_schema_describes_the_reference_routes(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, method in [("/api/queue-job", "post"), ("/api/jobs/{job_id}", "get"), ("/api/assets", "get"),
                         ("/api/assets/{asset_id}", "delete"), ("/api/queue-status", "get"),
                         ("/api/job-callback", "post"), ("/api/jobs/{job_id}/cancel", "post"),
                         ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")]:
        assert method in paths[path], path
    assert not any(p.startswith("/functions/v1") for p in paths)  # one schema entry per route
    queue_job = paths["/api/queue-job"]["post"]
    assert queue_job["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueueJobRequest")
    for code in ("400", "401", "402", "409", "413", "422", "503"):
        ref = queue_job["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorEnvelope")
    components = schema["components"]["schemas"]
    assert set(components["QueueJobResponse"]["properties"]) == {
        "success", "job", "message", "queueLength", "modelVariant", "isSDXL", "negativePromptSupported", "jobType",
        "queue"}
    assert {"success", "error", "details", "retryable", "suggestedAction"} <= set(
        components["ErrorEnvelope"]["properties"])
