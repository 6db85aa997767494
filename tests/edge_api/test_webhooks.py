"""The app's webhooks, end to end: a real receiver on loopback verifies every delivery with `standardwebhooks`.

The API runs on real Postgres and Redis; the job moves by the worker's signed callbacks, a cancel
and the sweeper, exactly as in production.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from harness import Api, serve_api
from webhook_receiver import Receiver, running_receiver, settled_log, wait_for

from edge_api.settings import ApiSettings
from jobs.catalog import DEFAULT_CATALOG

ALL = ["queued", "processing", "completed", "failed", "canceled"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as r:
        yield r


def webhook_settings(settings: ApiSettings, receiver: Receiver, **changes: Any) -> ApiSettings:
    return settings.model_copy(update={
        "webhook_secret": receiver.secret, "webhook_poll_seconds": 0.05, "webhook_retry_base_seconds": 0.1,
        "webhook_retry_max_interval_seconds": 0.3, "webhook_timeout_seconds": 2.0, **changes})


@pytest.fixture
async def api(api_settings: ApiSettings, receiver: Receiver) -> AsyncIterator[Api]:
    async for harness in serve_api(webhook_settings(api_settings, receiver)):
        yield harness


async def submit(api: Api, user: uuid.UUID, webhook: str | None, events: list[str] | None = None,
                 job_type: str = "sdxl_image_fast") -> str:
    body: dict[str, Any] = {"jobType": job_type, "metadata": {"prompt": "a red fox"}}
    if webhook is not None:
        body["webhook"] = webhook
    if events is not None:
        body["webhookEvents"] = events
    response = await api.client.post("/api/queue-job", json=body, headers=api.auth(user))
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job"]["id"]
    return job_id


async def complete(api: Api, user: uuid.UUID, job_id: str, job_type: str = "sdxl_image_fast") -> None:
    spec = DEFAULT_CATALOG[job_type]
    files = [f"{user}/{job_id}_{n}.{spec.file_extension}" for n in range(spec.num_outputs)]
    for path in files:
        await api.state.storage.upload(spec.bucket, path, b"\x89PNG fake", spec.content_type)
    response = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1, "assets": files})
    assert response.status_code == 200, response.text


async def three_jobs(api: Api, user: uuid.UUID, url: str, events: list[str] | None) -> dict[str, list[str]]:
    """One job completes, one fails, one is canceled while queued; returns each job's statuses in order."""
    await api.set_balance(user, 10)
    done, failed, canceled = [await submit(api, user, url, events) for _ in range(3)]
    for job_id in (done, failed):
        assert (await api.claim(job_id)).status_code == 200
    await complete(api, user, done)
    assert (await api.callback({"job_id": failed, "status": "failed", "attempt": 1,
                                "error_message": "out of luck"})).status_code == 200
    assert (await api.client.post(f"/api/jobs/{canceled}/cancel", headers=api.auth(user))).status_code == 200
    return {done: ["queued", "processing", "completed"], failed: ["queued", "processing", "failed"],
            canceled: ["queued", "canceled"]}


@pytest.mark.parametrize("events", [ALL, None, ["processing", "completed"], ["queued"]],
                         ids=["all", "default-terminal", "processing-completed", "queued-only"])
async def test_every_event_of_a_job_arrives_in_order_for_each_filter(
        api: Api, receiver: Receiver, user: uuid.UUID, events: list[str] | None) -> None:
    story = await three_jobs(api, user, receiver.at("/hook"), events)
    wanted = events or ["completed", "failed", "canceled"]
    expected = {job: [e for e in statuses if e in wanted] for job, statuses in story.items()}
    total = sum(len(v) for v in expected.values())
    await wait_for(lambda: len(receiver.events()) >= total, what=f"{total} events")
    await asyncio.sleep(0.3)  # nothing more arrives
    got: dict[str, list[str]] = {}
    for job, event in receiver.events():
        got.setdefault(job, []).append(event)
    assert got == {job: seq for job, seq in expected.items() if seq}
    assert receiver.bad_signatures == 0 and receiver.duplicates() == 0
    for delivery in receiver.accepted:  # the body is the job as its owner sees it, as of the event
        assert delivery.body["status"] == delivery.event and delivery.body["user_id"] == str(user)


async def test_a_completed_event_carries_the_job_with_signed_asset_urls(
        api: Api, receiver: Receiver, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await submit(api, user, receiver.at("/hook"))
    await api.claim(job_id)
    await complete(api, user, job_id)
    await wait_for(lambda: receiver.accepted, what="the completed event")
    body = receiver.accepted[0].body
    shown = (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()
    assert body["status"] == "completed" and len(body["assets"]) == DEFAULT_CATALOG["sdxl_image_fast"].num_outputs
    assert [a["path"] for a in body["assets"]] == [a["path"] for a in shown["assets"]]
    fetched = await api.client.get(body["assets"][0]["url"])
    assert fetched.status_code == 200 and fetched.content == b"\x89PNG fake"


async def test_a_receiver_down_for_a_while_gets_each_event_once_afterwards(
        api: Api, receiver: Receiver, user: uuid.UUID) -> None:
    receiver.answer("/hook", 503)
    story = await three_jobs(api, user, receiver.at("/hook"), ALL)
    await wait_for(lambda: receiver.hits.get("/hook", 0) >= 6, what="several refused tries")
    receiver.answer("/hook", 200)
    total = sum(len(v) for v in story.values())
    await wait_for(lambda: len(receiver.events()) == total, what="every event after the outage")
    await asyncio.sleep(0.3)
    assert receiver.duplicates() == 0 and receiver.bad_signatures == 0
    got: dict[str, list[str]] = {}
    for job, event in receiver.events():
        got.setdefault(job, []).append(event)
    assert got == story
    log = await settled_log(api, user, next(iter(story)))
    first = log["deliveries"][0]
    assert first["state"] == "delivered" and first["event"] == "queued"
    codes = [a["status_code"] for a in first["attempts"]]
    assert codes[-1] == 200 and set(codes[:-1]) == {503} and len(codes) >= 2


async def test_a_redirect_is_recorded_with_its_location_and_never_followed(
        api: Api, receiver: Receiver, user: uuid.UUID) -> None:
    receiver.answer("/moved", 301)
    await api.set_balance(user, 5)
    job_id = await submit(api, user, receiver.at("/moved"), ["queued"])
    await wait_for(lambda: receiver.hits.get("/moved", 0) >= 2, what="two tries")
    assert receiver.hits.get("/elsewhere", 0) == 0
    log = (await api.client.get(f"/api/jobs/{job_id}/webhooks", headers=api.auth(user))).json()
    [delivery] = log["deliveries"]
    assert delivery["state"] == "pending" and delivery["next_attempt_at"] is not None
    tries = delivery["attempts"]
    assert tries and all(t["status_code"] == 301 and t["location"] == receiver.at("/elsewhere") for t in tries)


async def test_a_410_stops_every_delivery_to_that_url(api: Api, receiver: Receiver, user: uuid.UUID) -> None:
    receiver.answer("/gone", 410)
    await api.set_balance(user, 10)
    first = await submit(api, user, receiver.at("/gone"), ALL)
    await wait_for(lambda: receiver.hits.get("/gone", 0) >= 1, what="the 410")
    await api.claim(first)
    await complete(api, user, first)
    await asyncio.sleep(0.5)
    assert receiver.hits["/gone"] == 1  # the later events of that job were never sent
    log = (await api.client.get(f"/api/jobs/{first}/webhooks", headers=api.auth(user))).json()
    assert [d["state"] for d in log["deliveries"]] == ["gone"] * 3
    assert log["deliveries"][0]["attempts"][0]["status_code"] == 410
    response = await api.client.post("/api/queue-job", headers=api.auth(user), json={
        "jobType": "sdxl_image_fast", "metadata": {"prompt": "again"}, "webhook": receiver.at("/gone")})
    assert response.status_code == 400 and "410" in response.json()["details"]


async def test_the_log_is_the_owners_alone(api: Api, receiver: Receiver, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await submit(api, user, receiver.at("/hook"), ["queued"])
    await wait_for(lambda: receiver.accepted, what="the queued event")
    stranger = await api.client.get(f"/api/jobs/{job_id}/webhooks", headers=api.auth(uuid.uuid4()))
    assert stranger.status_code == 404 and stranger.json()["success"] is False
    log = await settled_log(api, user, job_id)
    [delivery] = log["deliveries"]
    assert delivery["webhook_id"] == receiver.accepted[0].webhook_id and delivery["state"] == "delivered"
    assert delivery["delivered_at"] is not None


async def test_a_job_without_a_webhook_sends_nothing_and_a_default_url_serves_those_that_name_none(
        api_settings: ApiSettings, receiver: Receiver, user: uuid.UUID) -> None:
    settings = webhook_settings(api_settings, receiver, webhook_url=receiver.at("/default"))
    async for api in serve_api(settings):
        await api.set_balance(user, 5)
        job_id = await submit(api, user, None)
        await api.claim(job_id)
        await complete(api, user, job_id)
        await wait_for(lambda: receiver.events("/default"), what="the default URL's event")
        assert receiver.events("/default") == [(job_id, "completed")]
    async for api in serve_api(api_settings.model_copy(update={"webhook_secret": receiver.secret,
                                                               "webhook_poll_seconds": 0.05})):
        await api.set_balance(user, 5)
        job_id = await submit(api, user, None, job_type="image_fast")
        await api.claim(job_id)
        await complete(api, user, job_id, "image_fast")
        await asyncio.sleep(0.3)
        assert (await api.client.get(f"/api/jobs/{job_id}/webhooks", headers=api.auth(user))).json()[
            "deliveries"] == []


async def test_metrics_count_deliveries_by_outcome(api: Api, receiver: Receiver, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    job_id = await submit(api, user, receiver.at("/hook"), ["queued"])
    await wait_for(lambda: receiver.accepted, what="the queued event")
    await settled_log(api, user, job_id)
    metrics = (await api.client.get("/metrics")).text
    assert 'ourvidz_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    assert "ourvidz_webhook_delivery_delay_seconds_count 1.0" in metrics


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "https://user:pw@example.com/hook", "not a url",
                                 "http://"])
async def test_a_malformed_webhook_is_refused_before_anything_is_charged(
        api: Api, user: uuid.UUID, url: str) -> None:
    await api.set_balance(user, 5)
    response = await api.client.post("/api/queue-job", headers=api.auth(user), json={
        "jobType": "sdxl_image_fast", "metadata": {"prompt": "x"}, "webhook": url})
    assert response.status_code == 400 and response.json()["error"] == "Invalid webhook"
    assert await api.balance(user) == 5 and await api.job_rows(user) == []


async def test_an_unknown_event_name_is_refused(api: Api, user: uuid.UUID, receiver: Receiver) -> None:
    response = await api.client.post("/api/queue-job", headers=api.auth(user), json={
        "jobType": "sdxl_image_fast", "metadata": {"prompt": "x"}, "webhook": receiver.at("/hook"),
        "webhookEvents": ["completed", "exploded"]})
    assert response.status_code in (400, 422) and response.json()["success"] is False


async def test_without_a_webhook_secret_a_webhook_is_refused_with_the_setting_to_set(
        api_settings: ApiSettings, user: uuid.UUID) -> None:
    async for api in serve_api(api_settings):
        await api.set_balance(user, 5)
        response = await api.client.post("/api/queue-job", headers=api.auth(user), json={
            "jobType": "sdxl_image_fast", "metadata": {"prompt": "x"}, "webhook": "https://example.com/hook"})
        assert response.status_code == 400 and "OURVIDZ_WEBHOOK_SECRET" in response.json()["suggestedAction"]


async def test_the_embedded_store_delivers_every_event_in_order_too(
        api_settings: ApiSettings, receiver: Receiver, user: uuid.UUID, tmp_path: Any) -> None:
    # SQLite, with the jobs table as the queue: the outbox is the same tables and statements.
    settings = webhook_settings(api_settings, receiver, database_url=f"sqlite:///{tmp_path}/ourvidz.db",
                                redis_url=None)
    async for api in serve_api(settings):
        story = await three_jobs(api, user, receiver.at("/hook"), ALL)
        wanted = sum(len(v) for v in story.values())
        await wait_for(lambda n=wanted: len(receiver.events()) >= n, what=f"{wanted} events")
        got: dict[str, list[str]] = {}
        for job, event in receiver.events():
            got.setdefault(job, []).append(event)
        assert got == story and receiver.duplicates() == 0
