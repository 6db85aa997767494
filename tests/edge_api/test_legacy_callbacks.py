"""Callbacks of the ourvidz workers that run today (July 2025: sdxl_worker.py, wan_worker.py), byte for byte.

They take a message with `RPOP`, upload to the bucket under `{user_id}/`, and report with `requests.post(
json=...)`: `{"job_id", "status", "assets": [paths], "error_message"}`, `Authorization: Bearer <service-role
key>`, no signature, and never `processing`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
import redis.asyncio as aioredis
from harness import JWT_SECRET, Api, serve_api

from edge_api.settings import ApiSettings
from jobs.catalog import DEFAULT_CATALOG

SERVICE_KEY = "service-role-key-of-the-project"


@pytest.fixture
async def api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async for served in serve_api(api_settings.model_copy(update={"supabase_service_key": SERVICE_KEY})):
        yield served


async def rpop(api: Api, queue: str) -> dict[str, object]:
    client = aioredis.Redis.from_url(str(api.settings.redis_url), decode_responses=True)
    try:
        raw = await client.rpop(queue)
    finally:
        await client.aclose()
    assert raw is not None
    message: dict[str, object] = json.loads(raw)
    return message


async def old_report(api: Api, body: dict[str, object], bearer: str = SERVICE_KEY) -> tuple[int, dict[str, object]]:
    # What `requests.post(url, json=body, headers=...)` sends: json.dumps with its default separators.
    response = await api.client.post("/api/job-callback", content=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    return response.status_code, response.json()


async def upload_like_sdxl_worker(api: Api, message: dict[str, object]) -> list[str]:
    spec = DEFAULT_CATALOG[str(message["type"])]
    stamp = int(time.time())
    paths = [f"{message['user_id']}/sdxl_{message['id']}_{stamp}_{n + 1}.png" for n in range(spec.num_outputs)]
    for path in paths:
        await api.state.storage.upload(spec.bucket, path, b"\x89PNG old worker", "image/png")
    return paths


async def test_an_old_sdxl_workers_unsigned_completion_completes_the_job_once(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    message = await rpop(api, "sdxl_queue")
    assert message["id"] == job_id
    paths = await upload_like_sdxl_worker(api, message)
    body: dict[str, object] = {"job_id": job_id, "status": "completed", "assets": paths, "error_message": None}
    code, answer = await old_report(api, body)
    assert code == 200 and answer["status"] == "completed", answer
    assert [a["path"] for a in await api.asset_rows(job_id)] == paths
    assert (await api.job_row(job_id))["attempts"] == 1
    replayed_code, replayed = await old_report(api, body)  # the old worker retries on a timeout
    assert replayed_code == 200 and replayed["duplicate"] is True
    assert len(await api.asset_rows(job_id)) == len(paths) and await api.ledger_sum(job_id) == -1


async def test_an_old_workers_failure_refunds_once(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "video_fast")
    await rpop(api, "wan_queue")
    body: dict[str, object] = {"job_id": job_id, "status": "failed", "assets": [], "error_message": "CUDA OOM"}
    for _ in range(2):
        code, answer = await old_report(api, body)
        assert code == 200 and answer["status"] == "failed"
    assert await api.balance(user) == 5 and await api.ledger_sum(job_id) == 0


async def test_an_old_wan_workers_video_path_is_accepted(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    video_id = str(uuid.uuid4())
    job_id = await api.submitted(user, "video_fast")
    await rpop(api, "wan_queue")
    path = f"{user}/{video_id}.mp4"
    await api.state.storage.upload("video_fast", path, b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    code, answer = await old_report(api, {"job_id": job_id, "status": "completed", "assets": [path],
                                          "error_message": None})
    assert code == 200 and answer["status"] == "completed"


def service_role_jwt(secret: str = JWT_SECRET, role: str = "service_role") -> str:
    now = int(time.time())
    return jwt.encode({"iss": "supabase", "ref": "project", "role": role, "iat": now, "exp": now + 3600},
                      secret, algorithm="HS256")


async def test_a_service_role_jwt_of_the_project_is_accepted(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    code, _ = await old_report(api, {"job_id": job_id, "status": "failed", "assets": [], "error_message": "x"},
                               bearer=service_role_jwt())
    assert code == 200


@pytest.mark.parametrize("bearer", ["another-key", "Basic", "user-token", "anon-jwt", "foreign-service-jwt"])
async def test_anything_else_without_a_signature_is_refused(api: Api, user: uuid.UUID, bearer: str) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    token = {"user-token": api.token(user), "anon-jwt": service_role_jwt(role="anon"),
             "foreign-service-jwt": service_role_jwt(secret="another-project-secret-long-enough-for-hs256")
             }.get(bearer, bearer)
    code, answer = await old_report(api, {"job_id": job_id, "status": "failed", "assets": [], "error_message": "x"},
                                    bearer=token)
    assert code == 401 and answer["error"] == "Authentication failed"
    assert (await api.job_row(job_id))["status"] == "queued"


async def test_without_a_configured_key_only_a_service_role_jwt_passes(api_settings: ApiSettings,
                                                                       user: uuid.UUID) -> None:
    async for served in serve_api(api_settings):
        await served.set_balance(user, 5)
        job_id = await served.submitted(user)
        body: dict[str, object] = {"job_id": job_id, "status": "failed", "assets": [], "error_message": "x"}
        assert (await old_report(served, body, bearer=SERVICE_KEY))[0] == 401
        assert (await old_report(served, body, bearer=service_role_jwt()))[0] == 200
