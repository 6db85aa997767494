"""The web page and what it reads: `/`, `/static/*`, `/api/catalog`, `/api/me` and a job's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from harness import Api

from edge_api import events
from jobs.catalog import DEFAULT_CATALOG

# --- The page and its files -------------------------------------------------------------------------


async def test_index_serves_the_page_with_its_module_script(api: Api) -> None:
    response = await api.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/static/app.js"></script>' in response.text
    assert '<link rel="stylesheet" href="/static/style.css">' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "http" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("name", "content_type", "needle"), [
    ("app.js", "text/javascript; charset=utf-8", "new EventSource("),
    ("style.css", "text/css; charset=utf-8", ":focus-visible"),
    ("favicon.svg", "image/svg+xml", "<svg"),
])
async def test_static_files_have_their_content_types(api: Api, name: str, content_type: str, needle: str) -> None:
    response = await api.client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert needle in response.text
    assert "content-security-policy" in response.headers
    again = await api.client.get(f"/static/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("path", ["/static/__init__.py", "/static/missing.css", "/static/..%2Fpages.py",
                                  "/static/.hidden.js", "/static/%2E%2E%2Fapp.py"])
async def test_only_the_page_files_are_served(api: Api, path: str) -> None:
    response = await api.client.get(path)
    assert response.status_code == 404
    assert response.json()["success"] is False


async def test_the_page_allows_media_from_where_signed_urls_point(api_settings: Any) -> None:
    from edge_api.pages import content_security_policy

    supabase = api_settings.model_copy(update={"storage": "supabase", "supabase_url": "https://abc.supabase.co/"})
    policy = content_security_policy(supabase)
    assert "img-src 'self' https://abc.supabase.co;" in policy
    assert "media-src 'self' https://abc.supabase.co;" in policy
    assert "connect-src 'self';" in policy  # the API itself stays same-origin


# --- /api/catalog and /api/me ----------------------------------------------------------------------


async def test_catalog_lists_the_ten_types_with_prices_and_times(api: Api) -> None:
    response = await api.client.get("/api/catalog")  # public: the page shows it before sign-in
    assert response.status_code == 200
    types = {t["job_type"]: t for t in response.json()["job_types"]}
    assert list(types) == list(DEFAULT_CATALOG)
    for job_type, spec in DEFAULT_CATALOG.items():
        assert types[job_type]["price"] == spec.price
        assert types[job_type]["expected_seconds"] == DEFAULT_CATALOG.expected_seconds(job_type)
        assert types[job_type]["description"] == spec.description
    assert types["sdxl_image_fast"] | {"description": ""} == {
        "job_type": "sdxl_image_fast", "description": "", "family": "sdxl", "quality": "fast", "output": "image",
        "count": 6, "width": 1024, "height": 1024, "frames": 1, "fps": 0, "duration_seconds": None,
        "content_type": "image/png", "price": 1, "expected_seconds": 29.9, "negative_prompt_supported": True,
        "enhanced": False, "queue": "sdxl_queue"}
    video = types["video_high"]
    assert (video["output"], video["count"], video["frames"], video["fps"], video["duration_seconds"]) == (
        "video", 1, 97, 16, 6.06)
    assert (video["width"], video["height"], video["negative_prompt_supported"]) == (480, 832, False)
    assert types["video7b_fast_enhanced"]["enhanced"] is True
    schema = (await api.client.get("/openapi.json")).json()
    assert "/api/catalog" in schema["paths"] and "/api/me" in schema["paths"]
    assert "/api/jobs/{job_id}/events" in schema["paths"]
    assert "/" not in schema["paths"]


async def test_me_needs_a_token_and_tells_the_balance(api: Api, user: uuid.UUID) -> None:
    refused = await api.client.get("/api/me")
    assert refused.status_code == 401
    assert refused.json()["suggestedAction"]
    await api.set_balance(user, 7)
    me = await api.client.get("/api/me", headers=api.auth(user))
    assert me.json() == {"success": True, "user_id": str(user), "email": None, "balance": 7}
    await api.submitted(user, "sdxl_image_high")
    assert (await api.client.get("/api/me", headers=api.auth(user))).json()["balance"] == 5


async def test_me_refuses_the_token_as_a_query_parameter(api: Api, user: uuid.UUID) -> None:
    # Only the event stream, which EventSource opens, takes `?access_token=`.
    response = await api.client.get("/api/me", params={"access_token": api.token(user)})
    assert response.status_code == 401


# --- /api/jobs/{id}/events -------------------------------------------------------------------------


class EventReader:
    """Reads a job's stream in the background; tests await its events one by one."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.comments: list[str] = []
        self.response: httpx.Response | None = None

    async def read(self, client: httpx.AsyncClient, url: str, **kwargs: Any) -> None:
        async with client.stream("GET", url, **kwargs) as response:
            self.response = response
            event, data = None, []
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    assert event == "job"
                    self.events.put_nowait(json.loads("\n".join(data)))
                    event, data = None, []
        self.events.put_nowait(None)  # the stream ended

    async def next(self) -> dict[str, Any] | None:
        return await asyncio.wait_for(self.events.get(), timeout=5)


@contextlib.asynccontextmanager
async def reading(api: Api, url: str, **kwargs: Any) -> AsyncIterator[tuple[EventReader, asyncio.Task[None]]]:
    reader = EventReader()
    task = asyncio.create_task(reader.read(api.client, url, **kwargs))
    try:
        yield reader, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_events_stream_each_change_until_the_job_ends(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "sdxl_image_fast")
    async with reading(api, f"/api/jobs/{job_id}/events", headers=api.auth(user)) as (reader, task):
        first = await reader.next()
        assert reader.response is not None
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        assert first is not None
        assert (first["id"], first["status"], first["queue_position"]) == (job_id, "queued", 1)

        assert (await api.claim(job_id)).status_code == 200
        processing = await reader.next()
        assert processing is not None and (processing["status"], processing["progress"]) == ("processing", 0)

        seen = []
        for progress in (40, 40, 80):  # a repeated report changes nothing, so it sends nothing
            report = {"job_id": job_id, "status": "processing", "progress": progress, "attempt": 1}
            assert (await api.callback(report)).status_code == 200
            if progress == 40 and seen:
                await asyncio.sleep(3 * events.POLL_SECONDS)
                continue
            seen.append((await reader.next() or {}).get("progress"))
        assert seen == [40, 80]

        paths = [f"{user}/{i}.png" for i in range(6)]
        for path in paths:
            await api.state.storage.upload("sdxl_image_fast", path, b"\x89PNG fake", "image/png")
        done = {"job_id": job_id, "status": "completed", "assets": paths, "attempt": 1}
        assert (await api.callback(done)).status_code == 200
        completed = await reader.next()
        assert completed is not None and completed["status"] == "completed" and completed["progress"] == 100
        # The same JSON as GET /api/jobs/{id}, signed asset URLs included (they expire, so compare the rest).
        view = (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()
        assert {k: v for k, v in completed.items() if k != "assets"} == {k: v for k, v in view.items() if k != "assets"}
        assert [a["path"] for a in completed["assets"]] == paths
        assert all(a["url"].startswith("/api/files/sdxl_image_fast/") for a in completed["assets"])

        assert await reader.next() is None  # the stream ends after a terminal status
        await task


async def test_events_of_a_finished_job_send_it_once_and_end(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    assert (await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))).status_code == 200
    async with reading(api, f"/api/jobs/{job_id}/events", headers=api.auth(user)) as (reader, _task):
        only = await reader.next()
        assert only is not None and only["status"] == "canceled"
        assert await reader.next() is None


async def test_events_accept_the_token_as_a_query_parameter(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    async with reading(api, f"/api/jobs/{job_id}/events", params={"access_token": api.token(user)}) as (reader, _):
        first = await reader.next()
        assert first is not None and first["status"] == "queued"
    bad = await api.client.get(f"/api/jobs/{job_id}/events", params={"access_token": "not-a-jwt"})
    assert bad.status_code == 401 and bad.json()["success"] is False
    missing = await api.client.get(f"/api/jobs/{job_id}/events")
    assert missing.status_code == 401


async def test_events_of_another_users_job_are_not_found(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    stranger = uuid.uuid4()
    for headers, params in [(api.auth(stranger), {}), ({}, {"access_token": api.token(stranger)})]:
        response = await api.client.get(f"/api/jobs/{job_id}/events", headers=headers, params=params)
        assert response.status_code == 404
        assert response.json()["error"] == "Job not found"
    for bad_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = await api.client.get(f"/api/jobs/{bad_id}/events", headers=api.auth(user))
        assert response.status_code == 404


async def test_events_keep_an_idle_stream_alive(api: Api, user: uuid.UUID, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.2)
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    async with reading(api, f"/api/jobs/{job_id}/events", headers=api.auth(user)) as (reader, _task):
        await reader.next()
        for _ in range(100):
            if reader.comments:
                break
            await asyncio.sleep(0.05)
        assert reader.comments and reader.comments[0] == ": keepalive"
        assert reader.events.empty()  # nothing changed, so no event


async def test_events_stop_polling_when_the_client_leaves(api: Api, user: uuid.UUID,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    await api.set_balance(user, 5)
    job_id = await api.submitted(user)
    reads = 0
    get_job = api.state.store.get_job

    async def counting_get_job(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await get_job(*args, **kwargs)

    monkeypatch.setattr(api.state.store, "get_job", counting_get_job)
    # A client of its own, so closing it really closes the connection.
    async with httpx.AsyncClient(base_url=api.url) as client:
        async with client.stream("GET", f"/api/jobs/{job_id}/events", headers=api.auth(user)) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break
        await asyncio.sleep(2 * events.POLL_SECONDS)
    after_leaving = reads
    await asyncio.sleep(5 * events.POLL_SECONDS)
    assert reads <= after_leaving + 1, "the stream kept polling the store after its client left"
