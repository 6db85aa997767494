"""GET /api/jobs/{id}, GET /api/jobs and POST /api/jobs/{id}/cancel: what the owner polls, and only the owner."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from harness import Api

from jobs.catalog import DEFAULT_CATALOG

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def get_job(api: Api, user: uuid.UUID, job_id: str) -> dict[str, object]:
    response = await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def complete_with_files(api: Api, user: uuid.UUID, job_type: str = "sdxl_image_fast",
                              count: int = 6) -> tuple[str, list[str], list[bytes]]:
    """A job that ran and completed, whose files really are in the local storage."""
    spec = DEFAULT_CATALOG[job_type]
    job_id = await api.submitted(user, job_type)
    assert (await api.claim(job_id)).status_code == 200
    files = [f"{user}/{job_id}_{n}.{spec.file_extension}" for n in range(count)]
    contents = [PNG + bytes([n]) for n in range(count)]
    for path, data in zip(files, contents, strict=True):
        await api.state.storage.upload(spec.bucket, path, data, spec.content_type)
    response = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1, "assets": files})
    assert response.status_code == 200, response.text
    return job_id, files, contents


async def test_a_queued_job_shows_its_place_in_its_queue_and_the_wait(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    sdxl = [await api.submitted(user, "sdxl_image_fast") for _ in range(3)]
    wan = await api.submitted(user, "video_fast")
    fast = DEFAULT_CATALOG["sdxl_image_fast"].reference_seconds
    views = [await get_job(api, user, job_id) for job_id in sdxl]
    assert [v["queue_position"] for v in views] == [1, 2, 3]
    assert [v["estimated_wait_seconds"] for v in views] == [round(fast * n, 1) for n in (1, 2, 3)]
    wan_view = await get_job(api, user, wan)
    assert wan_view["queue_position"] == 1
    assert wan_view["estimated_wait_seconds"] == DEFAULT_CATALOG["video_fast"].reference_seconds


async def test_the_wait_is_shared_among_live_workers(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_ids = [await api.submitted(user, "sdxl_image_fast") for _ in range(2)]
    await api.state.queue.heartbeat("gpu-0", ["sdxl_queue"], ttl=60)
    await api.state.queue.heartbeat("gpu-1", ["sdxl_queue"], ttl=60)
    view = await get_job(api, user, job_ids[1])
    assert view["estimated_wait_seconds"] == round(2 * DEFAULT_CATALOG["sdxl_image_fast"].reference_seconds / 2, 1)


async def test_a_job_leaves_the_queue_count_once_it_runs(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    first, second = [await api.submitted(user, "image_fast") for _ in range(2)]
    assert (await api.claim(first)).status_code == 200
    running = await get_job(api, user, first)
    assert (running["status"], running["queue_position"], running["estimated_wait_seconds"]) == (
        "processing", None, None)
    assert (await get_job(api, user, second))["queue_position"] == 1


async def test_the_wait_counts_what_remains_of_the_running_job(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    first, second = [await api.submitted(user, "image_fast") for _ in range(2)]
    assert (await api.claim(first)).status_code == 200
    assert (await api.callback({"job_id": first, "status": "processing", "attempt": 1, "progress": 75})).status_code \
        == 200
    expected = DEFAULT_CATALOG.expected_seconds("image_fast")
    assert (await get_job(api, user, second))["estimated_wait_seconds"] == round(expected * 1.25, 1)


async def test_the_view_has_the_columns_client_apps_read(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_id = await api.submitted(user, "video7b_high_enhanced")
    view = await get_job(api, user, job_id)
    assert set(view) >= {"id", "user_id", "job_type", "format", "quality", "model_type", "status", "progress",
                         "metadata", "error_message", "attempts", "max_attempts", "created_at", "started_at",
                         "completed_at", "project_id", "image_id", "video_id", "queue_position",
                         "estimated_wait_seconds", "assets"}
    assert (view["id"], view["user_id"], view["job_type"]) == (job_id, str(user), "video7b_high_enhanced")
    assert (view["format"], view["quality"], view["model_type"]) == ("video", "high", "wan")
    assert (view["status"], view["progress"], view["attempts"], view["max_attempts"]) == ("queued", 0, 0, 3)
    assert view["assets"] == []


async def test_a_completed_job_shows_its_assets_with_urls_that_serve_the_files(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_id, files, contents = await complete_with_files(api, user)
    view = await get_job(api, user, job_id)
    assert view["status"] == "completed"
    assert view["progress"] == 100
    metadata = view["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["primary_asset"] == metadata["all_assets"][0] == files[0]
    assert metadata["all_assets"] == files
    assets = view["assets"]
    assert isinstance(assets, list)
    assert [(a["path"], a["index"], a["kind"], a["bucket"]) for a in assets] == [
        (p, n, "image", "sdxl_image_fast") for n, p in enumerate(files)]
    for asset, data in zip(assets, contents, strict=True):
        served = await api.client.get(asset["url"])
        assert served.status_code == 200
        assert served.content == data
        assert served.headers["content-type"] == "image/png"


async def test_a_tampered_file_url_is_403(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_id, files, _ = await complete_with_files(api, user, "video_fast", 1)
    [asset] = (await get_job(api, user, job_id))["assets"]  # type: ignore[misc]
    url = urlsplit(asset["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    signature = query["signature"]
    forged = {**query, "signature": ("0" if signature[0] != "0" else "1") + signature[1:]}
    assert (await api.client.get(f"{url.path}?{urlencode(forged)}")).status_code == 403
    later = {**query, "expires": str(int(query["expires"]) + 3600)}
    assert (await api.client.get(f"{url.path}?{urlencode(later)}")).status_code == 403
    other_path = url.path.replace(files[0].split("/")[-1], "someone-elses.mp4")
    assert (await api.client.get(f"{other_path}?{url.query}")).status_code == 403
    assert (await api.client.get(f"{url.path}?{url.query}")).status_code == 200


async def test_a_failed_job_shows_the_error(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_id = await api.submitted(user, "image_fast")
    await api.claim(job_id)
    await api.callback({"job_id": job_id, "status": "failed", "attempt": 1, "errorMessage": "model failed"})
    view = await get_job(api, user, job_id)
    assert (view["status"], view["error_message"], view["assets"]) == ("failed", "model failed", [])
    assert view["completed_at"] is not None


async def test_another_users_job_is_404_and_shows_nothing_of_it(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_id = await api.submitted(user, "image_fast", prompt="a secret prompt")
    stranger = uuid.uuid4()
    for path in (f"/api/jobs/{job_id}", f"/functions/v1/jobs/{job_id}"):
        response = await api.client.get(path, headers=api.auth(stranger))
        assert response.status_code == 404
        assert job_id not in response.text and "secret" not in response.text
        assert response.json()["success"] is False


async def test_the_functions_v1_prefix_serves_the_job_too(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_id = await api.submitted(user, "image_fast")
    response = await api.client.get(f"/functions/v1/jobs/{job_id}", headers=api.auth(user))
    assert response.status_code == 200 and response.json()["id"] == job_id


async def test_the_job_list_shows_only_the_owners_jobs_newest_first(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    stranger = uuid.uuid4()
    await api.set_balance(stranger, 20)
    mine = [await api.submitted(user, "image_fast") for _ in range(3)]
    await api.submitted(stranger, "image_fast")
    await api.claim(mine[0])
    response = await api.client.get("/api/jobs", headers=api.auth(user))
    assert [j["id"] for j in response.json()] == mine[::-1]
    limited = await api.client.get("/api/jobs", params={"limit": 2}, headers=api.auth(user))
    assert [j["id"] for j in limited.json()] == mine[:0:-1]
    running = await api.client.get("/api/jobs", params={"status": "processing"}, headers=api.auth(user))
    assert [j["id"] for j in running.json()] == [mine[0]]


# --- Cancel ----------------------------------------------------------------------------------------------


async def test_canceling_a_queued_job_refunds_it(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    job_id = await api.submitted(user, "video_high")  # costs 5
    response = await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    assert await api.balance(user) == 10
    assert await api.ledger_sum(job_id) == 0
    assert [e["kind"] for e in await api.ledger(user)] == ["charge", "refund"]


async def test_canceling_twice_refunds_once(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    job_id = await api.submitted(user, "video_high")
    assert (await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))).status_code == 200
    again = await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))
    assert again.status_code == 409
    assert await api.balance(user) == 10 and await api.ledger_sum(job_id) == 0


@pytest.mark.parametrize("state", ["processing", "completed"])
async def test_a_job_that_ran_cannot_be_canceled(api: Api, user: uuid.UUID, state: str) -> None:
    await api.set_balance(user, 10)
    job_id = await api.submitted(user, "image_fast")
    await api.claim(job_id)
    if state == "completed":
        await api.callback({"job_id": job_id, "status": "completed", "attempt": 1,
                            "assets": [f"{user}/{job_id}.png"]})
    response = await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))
    assert response.status_code == 409
    assert response.json()["success"] is False and state in response.json()["error"]
    assert (await api.job_row(job_id))["status"] == state
    assert await api.ledger_sum(job_id) == -1


async def test_another_user_cannot_cancel_a_job(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    job_id = await api.submitted(user, "image_fast")
    response = await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(uuid.uuid4()))
    assert response.status_code == 404
    assert (await api.job_row(job_id))["status"] == "queued"
