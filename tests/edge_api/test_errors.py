"""Every refusal in the reference's envelope, with the reference's codes: 400, 404, 405, 413, 422, 503."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from harness import Api, serve_api
from proxy import tcp_proxy
from servers import RedisServer, free_port
from sqlalchemy.engine import make_url

from edge_api.app import create_app
from edge_api.settings import ApiSettings
from jobs.catalog import DEFAULT_CATALOG, SDXL_QUEUE
from jobs.messages import MAX_PROMPT_CHARS, MAX_SEED
from jobs.webhooks import signed_headers

ENVELOPE_KEYS = {"success", "error", "details", "retryable", "suggestedAction"}


@pytest.fixture
def api(shared_api: Api) -> Api:
    """Each refusal here is checked against the test's own user, so one server and database serve the
    module; the tests that change the queue or Redis start servers of their own."""
    return shared_api


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    return body


async def assert_nothing_created(api: Api, user: uuid.UUID, balance: int | None) -> None:
    assert await api.job_rows(user) == []
    assert await api.ledger(user) == []
    assert await api.balance(user) == balance


async def post_job(api: Api, user: uuid.UUID, body: Any) -> httpx.Response:
    return await api.client.post("/api/queue-job", json=body, headers=api.auth(user))


async def test_an_invalid_job_type_is_400_listing_the_ten_valid_types_once(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    body = assert_envelope(await api.submit(user, "sdxl_image_ultra"), 400)
    assert body["error"] == "Invalid job type"
    assert body["details"].split(": ", 1)[1].split(", ") == DEFAULT_CATALOG.job_types
    assert not any(job_type in body["suggestedAction"] for job_type in DEFAULT_CATALOG.job_types)
    await assert_nothing_created(api, user, 5)


BAD_BODIES: dict[str, Any] = {
    "negative seed": {"jobType": "image_fast", "metadata": {"prompt": "x", "seed": -1}},
    "seed over 2**32-1": {"jobType": "image_fast", "metadata": {"prompt": "x", "seed": MAX_SEED + 1}},
    "seed not a number": {"jobType": "image_fast", "metadata": {"prompt": "x", "seed": "lucky"}},
    "projectId not a uuid": {"jobType": "image_fast", "projectId": "project-7", "metadata": {"prompt": "x"}},
    "videoId not a uuid": {"jobType": "video_fast", "videoId": "v1", "metadata": {"prompt": "x"}},
    "imageId not a uuid": {"jobType": "image_fast", "imageId": "12", "metadata": {"prompt": "x"}},
    "empty prompt": {"jobType": "image_fast", "metadata": {"prompt": ""}},
    "blank prompt": {"jobType": "image_fast", "metadata": {"prompt": "   \n"}},
    "no prompt": {"jobType": "image_fast"},
    "bucket of another job type": {"jobType": "image_fast", "metadata": {"prompt": "x", "bucket": "video_high"}},
    "negative credits": {"jobType": "image_fast", "metadata": {"prompt": "x", "credits": -3}},
    "no jobType": {"metadata": {"prompt": "x"}},
    "jobType not a string": {"jobType": 7, "metadata": {"prompt": "x"}},
    "metadata not an object": {"jobType": "image_fast", "metadata": "x"},
    "a list instead of an object": [{"jobType": "image_fast"}],
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_a_bad_field_is_400_and_creates_nothing(api: Api, user: uuid.UUID, case: str) -> None:
    await api.set_balance(user, 5)
    body = assert_envelope(await post_job(api, user, BAD_BODIES[case]), 400)
    assert body["details"]
    assert body["retryable"] is False
    await assert_nothing_created(api, user, 5)


async def test_the_matching_bucket_is_accepted(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    assert (await api.submit(user, "video_fast", bucket="video_fast")).status_code == 200


async def test_malformed_json_is_422(api: Api, user: uuid.UUID) -> None:
    response = await api.client.post("/api/queue-job", content=b'{"jobType": "image_fast", "metadata": {',
                                     headers={**api.auth(user), "content-type": "application/json"})
    body = assert_envelope(response, 422)
    assert body["error"] == "Malformed JSON body"


async def test_a_body_over_the_limit_is_413(api: Api, user: uuid.UUID) -> None:
    padding = "x" * api.settings.max_body_bytes
    body = assert_envelope(await api.submit(user, "image_fast", style=padding), 413)
    assert str(api.settings.max_body_bytes) in body["details"]


async def test_a_chunked_body_over_the_limit_is_413(api: Api, user: uuid.UUID) -> None:
    # No Content-Length: the limit is enforced on the bytes as they arrive.
    await api.set_balance(user, 5)
    chunk = b" " * 8192

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jobType": "image_fast", "metadata": {"prompt": "x"}'
        for _ in range(api.settings.max_body_bytes // len(chunk) + 2):
            yield chunk
        yield b"}"

    response = await api.client.post("/api/queue-job", content=chunks(),
                                     headers={**api.auth(user), "content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_envelope(response, 413)
    await assert_nothing_created(api, user, 5)


async def test_a_chunked_body_under_the_limit_is_accepted(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jobType": "image_fast", '
        yield b'"metadata": {"prompt": "a fox"}}'

    response = await api.client.post("/api/queue-job", content=chunks(),
                                     headers={**api.auth(user), "content-type": "application/json"})
    assert response.status_code == 200, response.text


async def test_a_callback_over_the_body_limit_is_413(api: Api) -> None:
    body = {"job_id": str(uuid.uuid4()), "status": "failed", "error_message": "e" * api.settings.max_body_bytes}
    assert_envelope(await api.callback(body), 413)


async def test_a_chunked_callback_over_the_body_limit_is_413(api: Api) -> None:
    data = json.dumps({"job_id": str(uuid.uuid4()), "status": "failed",
                       "error_message": "e" * api.settings.max_body_bytes}).encode()
    headers = signed_headers(api.settings.callback_secret, data, "msg_chunked")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 4096):
            yield data[start:start + 4096]

    response = await api.client.post("/api/job-callback", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert_envelope(response, 413)


async def test_a_prompt_over_4000_characters_is_413(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    body = assert_envelope(await api.submit(user, "image_fast", prompt="p" * (MAX_PROMPT_CHARS + 1)), 413)
    assert "prompt" in body["details"]
    await assert_nothing_created(api, user, 5)
    assert (await api.submit(user, "image_fast", prompt="p" * MAX_PROMPT_CHARS)).status_code == 200


@pytest.mark.parametrize("path", ["/api/jobs/not-a-uuid", f"/api/jobs/{uuid.uuid4()}",
                                  f"/functions/v1/jobs/{uuid.uuid4()}"])
async def test_an_unknown_job_is_404(api: Api, user: uuid.UUID, path: str) -> None:
    body = assert_envelope(await api.client.get(path, headers=api.auth(user)), 404)
    assert body["error"] == "Job not found"


async def test_an_unknown_route_is_404_in_the_envelope(api: Api) -> None:
    assert_envelope(await api.client.get("/api/no-such-route"), 404)


async def test_a_wrong_method_is_405_in_the_envelope(api: Api, user: uuid.UUID) -> None:
    assert_envelope(await api.client.get("/api/queue-job", headers=api.auth(user)), 405)


async def test_a_bad_query_parameter_is_400(api: Api, user: uuid.UUID) -> None:
    assert_envelope(await api.client.get("/api/assets", params={"limit": 0}, headers=api.auth(user)), 400)
    assert_envelope(await api.client.get("/api/assets", params={"kind": "audio"}, headers=api.auth(user)), 400)
    assert_envelope(await api.client.get("/api/assets", params={"cursor": "garbage"}, headers=api.auth(user)), 400)


# --- 503: the queue is full or down -------------------------------------------------------------


async def test_a_full_queue_is_503_with_retry_after(api_settings: ApiSettings, user: uuid.UUID) -> None:
    async for api in serve_api(api_settings.model_copy(update={"max_queue_depth": 2})):
        await api.set_balance(user, 10)
        assert [(await api.submit(user)).status_code for _ in range(2)] == [200, 200]
        response = await api.submit(user)
        body = assert_envelope(response, 503)
        assert body["retryable"] is True
        assert int(response.headers["retry-after"]) > 0
        assert len(await api.job_rows(user)) == 2
        assert await api.balance(user) == 8
        # The other queue is not full.
        assert (await api.submit(user, "image_fast")).status_code == 200


async def assert_unavailable(api: Api, user: uuid.UUID) -> None:
    response = await api.submit(user, "sdxl_image_fast")
    body = assert_envelope(response, 503)
    assert body["retryable"] is True and body["suggestedAction"]
    assert int(response.headers["retry-after"]) > 0
    await assert_nothing_created(api, user, 5)


async def test_redis_unreachable_is_503_and_nothing_half_created(api_settings: ApiSettings,
                                                                 user: uuid.UUID) -> None:
    settings = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async for api in serve_api(settings):
        await api.set_balance(user, 5)
        await assert_unavailable(api, user)


async def test_redis_going_down_is_503_and_coming_back_works(api_settings: ApiSettings, user: uuid.UUID,
                                                             redis_server: RedisServer) -> None:
    async for api in serve_api(api_settings):
        await api.set_balance(user, 5)
        assert (await api.client.get("/readyz")).status_code == 200
        redis_server.stop()
        try:
            await assert_unavailable(api, user)
        finally:
            redis_server.start()
        assert (await api.submit(user)).status_code == 200
        assert await api.balance(user) == 4


async def test_a_push_that_fails_after_the_checks_is_undone(api_settings: ApiSettings, redis_url: str,
                                                            user: uuid.UUID) -> None:
    # A Redis user that may read the queue's depth but not LPUSH: the push fails after the job row
    # and the charge were committed, and the API must undo both.
    admin = aioredis.Redis.from_url(redis_url)
    name = f"nopush_{uuid.uuid4().hex[:8]}"
    await admin.execute_command("ACL", "SETUSER", name, "on", ">pw", "~*", "&*", "+@all", "-lpush")
    try:
        limited = redis_url.replace("redis://", f"redis://{name}:pw@")
        async for api in serve_api(api_settings.model_copy(update={"redis_url": limited})):
            await api.set_balance(user, 5)
            await assert_unavailable(api, user)
            assert await admin.llen(SDXL_QUEUE) == 0
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


async def test_postgres_unreachable_is_503_in_the_envelope_and_comes_back(api_settings: ApiSettings,
                                                                          user: uuid.UUID) -> None:
    # Through a proxy that drops every connection and refuses new ones: the hot path (asyncpg's pool:
    # submit, job status) and the engine (job list) both answer 503 with Retry-After, never a bare 500.
    database = make_url(api_settings.database_url)
    assert database.port is not None
    async with tcp_proxy(database.port) as proxy:
        proxied = database.set(port=proxy.port).render_as_string(hide_password=False)
        async for api in serve_api(api_settings.model_copy(update={"database_url": proxied})):
            await api.set_balance(user, 5)
            job_id = await api.submitted(user)
            proxy.cut()
            try:
                responses = [await api.submit(user),
                             await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user)),
                             await api.client.get("/api/jobs", headers=api.auth(user))]
            finally:
                proxy.restore()
            for response in responses:
                body = assert_envelope(response, 503)
                assert body["error"] == "The database is unavailable" and body["retryable"] is True
                assert int(response.headers["retry-after"]) > 0
            assert (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).status_code == 200
            await api.submitted(user)
            assert len(await api.job_rows(user)) == 2
            assert await api.balance(user) == 3


async def test_an_unexpected_error_is_a_500_in_the_envelope(api_settings: ApiSettings) -> None:
    app = create_app(api_settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        body = assert_envelope(await client.get("/boom"), 500)
    assert "a bug" not in json.dumps(body)  # nothing of the internals leaks
