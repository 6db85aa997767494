"""Each user's cap on queued + running jobs per queue: a 429 over it, nothing charged, held under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import Api, serve_api

from edge_api.settings import ApiSettings
from jobs.catalog import SDXL_QUEUE

CAP = 10


@pytest.fixture(params=["postgres", "sqlite"])
async def capped(request: pytest.FixtureRequest, api_settings: ApiSettings, tmp_path: Path) -> AsyncIterator[Api]:
    update: dict[str, object] = {"user_active_jobs": {"sdxl_queue": CAP, "wan_queue": 2}}
    if request.param == "sqlite":
        update |= {"database_url": f"sqlite:///{tmp_path / 'ourvidz.db'}", "redis_url": None}
    async for api in serve_api(api_settings.model_copy(update=update)):
        yield api


async def test_fifty_concurrent_submits_by_one_user_make_exactly_the_cap_of_jobs(capped: Api, user: uuid.UUID) -> None:
    await capped.set_balance(user, 50)
    responses = await asyncio.gather(*(capped.submit(user, prompt=f"fox {n}") for n in range(50)))
    assert sorted(r.status_code for r in responses) == [200] * CAP + [429] * (50 - CAP)
    refused = next(r for r in responses if r.status_code == 429)
    body = refused.json()
    assert body["success"] is False and body["error"] == "Too many active jobs" and body["retryable"] is True
    assert int(refused.headers["Retry-After"]) >= 1 and f"{CAP} jobs" in body["details"]
    assert await capped.balance(user) == 50 - CAP  # a refusal charged nothing
    assert len(await capped.job_rows(user)) == CAP
    assert len(await capped.ledger(user)) == CAP


async def test_a_first_seen_user_is_capped_too(api_settings: ApiSettings) -> None:
    settings = api_settings.model_copy(update={"user_active_jobs": {"sdxl_queue": 3}, "starting_credits": 20})
    async for api in serve_api(settings):
        user = uuid.uuid4()
        responses = await asyncio.gather(*(api.submit(user) for _ in range(12)))
        assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 9
        assert await api.balance(user) == 17


async def test_a_job_that_ends_frees_its_slot(capped: Api, user: uuid.UUID) -> None:
    await capped.set_balance(user, 50)
    ids = [await capped.submitted(user) for _ in range(CAP)]
    assert (await capped.submit(user)).status_code == 429
    assert (await capped.client.post(f"/api/jobs/{ids[0]}/cancel", headers=capped.auth(user))).status_code == 200
    await capped.claim(ids[1])
    assert (await capped.submit(user)).status_code == 200  # the canceled job's slot
    assert (await capped.submit(user)).status_code == 429  # the running one still counts
    await capped.callback({"job_id": ids[1], "status": "failed", "error_message": "boom"})
    assert (await capped.submit(user)).status_code == 200


async def test_the_cap_is_per_user_and_per_queue(capped: Api, user: uuid.UUID) -> None:
    other = uuid.uuid4()
    await capped.set_balance(user, 100)
    await capped.set_balance(other, 100)
    for _ in range(CAP):
        await capped.submitted(user)
    assert (await capped.submit(user)).status_code == 429
    assert (await capped.submit(other)).status_code == 200
    assert [(await capped.submit(user, "video_fast")).status_code for _ in range(3)] == [200, 200, 429]


async def test_a_cap_of_zero_means_none(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 30)
    assert api.settings.active_cap(SDXL_QUEUE) == 0
    assert [(await api.submit(user)).status_code for _ in range(30)] == [200] * 30


def test_caps_are_named_by_queue_or_family_and_never_negative() -> None:
    assert ApiSettings(user_active_jobs={"sdxl": 3}).user_active_jobs == {"sdxl_queue": 3}
    with pytest.raises(ValueError, match="unknown queues"):
        ApiSettings(user_active_jobs={"flux": 3})
    with pytest.raises(ValueError):
        ApiSettings(user_active_jobs={"wan": -1})


async def test_cap_refusals_are_counted(capped: Api, user: uuid.UUID) -> None:
    await capped.set_balance(user, 50)
    for _ in range(CAP + 3):
        await capped.submit(user)
    assert 'ourvidz_refusals_total{reason="active_jobs"} 3.0' in (await capped.client.get("/metrics")).text
