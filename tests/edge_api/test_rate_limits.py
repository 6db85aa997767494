"""Request-rate limits: a 429 with `Retry-After` and the draft's `RateLimit` fields on every limited route,
shared by API replicas through Redis (or the database), and never on workers' callbacks or health routes."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from harness import Api, serve_api

from edge_api.rate_limits import RateLimiter, RedisCounters
from edge_api.settings import ApiSettings

QUOTA = 3
LIMITED = {"rate_limit_submits": QUOTA, "rate_limit_requests": QUOTA, "rate_limit_anonymous": QUOTA}


@pytest.fixture
async def limited(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async for api in serve_api(api_settings.model_copy(update=LIMITED)):
        yield api


Call = Callable[[Api, uuid.UUID, str], Awaitable[httpx.Response]]

ROUTES: dict[str, Call] = {
    "POST queue-job": lambda api, user, job: api.submit(user),
    "GET jobs": lambda api, user, job: api.client.get("/api/jobs", headers=api.auth(user)),
    "GET job": lambda api, user, job: api.client.get(f"/api/jobs/{job}", headers=api.auth(user)),
    "GET webhooks": lambda api, user, job: api.client.get(f"/api/jobs/{job}/webhooks", headers=api.auth(user)),
    "POST cancel": lambda api, user, job: api.client.post(f"/api/jobs/{job}/cancel", headers=api.auth(user)),
    "GET assets": lambda api, user, job: api.client.get("/api/assets", headers=api.auth(user)),
    "DELETE asset": lambda api, user, job: api.client.delete(f"/api/assets/{uuid.uuid4()}", headers=api.auth(user)),
    "GET me": lambda api, user, job: api.client.get("/api/me", headers=api.auth(user)),
    "GET events": lambda api, user, job: api.client.get(f"/api/jobs/{uuid.uuid4()}/events", headers=api.auth(user)),
    "GET catalog": lambda api, user, job: api.client.get("/api/catalog"),
    "GET queue-status": lambda api, user, job: api.client.get("/api/queue-status"),
    "POST functions/v1 queue-job": lambda api, user, job: api.client.post(
        "/functions/v1/queue-job", headers=api.auth(user), json={"jobType": "sdxl_image_fast",
                                                                 "metadata": {"prompt": "a fox"}}),
}


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["success"] is False and body["error"] == "Too many requests" and body["retryable"] is True
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert re.fullmatch(r'"\w+";q=3;w=60', response.headers["RateLimit-Policy"])
    assert re.fullmatch(rf'"\w+";r=0;t={retry_after}', response.headers["RateLimit"])


@pytest.mark.parametrize("route", list(ROUTES))
async def test_every_limited_route_answers_429_with_retry_after_once_over_the_quota(
        limited: Api, user: uuid.UUID, route: str) -> None:
    await limited.set_balance(user, 100)
    owner = uuid.uuid4()
    await limited.set_balance(owner, 1)
    job = await limited.submitted(owner)  # another user's job: the call needs an id, not a success
    call = ROUTES[route]
    answers = [await call(limited, user, job) for _ in range(QUOTA)]
    assert all(a.status_code != 429 for a in answers), [a.text for a in answers]
    assert_refused(await call(limited, user, job))


async def test_each_answer_says_how_many_requests_remain(limited: Api, user: uuid.UUID) -> None:
    remaining = [(await limited.client.get("/api/me", headers=limited.auth(user))).headers["RateLimit"]
                 for _ in range(QUOTA)]
    assert [re.sub(r";t=\d+", "", r) for r in remaining] == ['"requests";r=2', '"requests";r=1', '"requests";r=0']


async def test_submits_and_reads_are_counted_apart_and_users_apart(limited: Api, user: uuid.UUID) -> None:
    await limited.set_balance(user, 100)
    for _ in range(QUOTA):
        assert (await limited.submit(user)).status_code == 200
    assert_refused(await limited.submit(user))
    assert (await limited.client.get("/api/jobs", headers=limited.auth(user))).status_code == 200
    other = uuid.uuid4()
    await limited.set_balance(other, 100)
    assert (await limited.submit(other)).status_code == 200


async def test_a_refused_submit_leaves_no_job_and_no_charge(limited: Api, user: uuid.UUID) -> None:
    await limited.set_balance(user, 100)
    for _ in range(QUOTA + 5):
        await limited.submit(user)
    assert len(await limited.job_rows(user)) == QUOTA
    assert await limited.balance(user) == 100 - QUOTA


async def test_callbacks_and_health_routes_are_never_limited(api_settings: ApiSettings, user: uuid.UUID) -> None:
    settings = api_settings.model_copy(update={**LIMITED, "rate_limit_submits": 100, "rate_limit_anonymous": 1})
    async for api in serve_api(settings):
        await api.set_balance(user, 100)
        jobs = [await api.submitted(user) for _ in range(5)]
        for job in jobs:
            assert (await api.claim(job)).status_code == 200
            for _ in range(3):
                progress = await api.callback({"job_id": job, "status": "processing", "progress": 50})
                assert progress.status_code != 429
        for path in ("/healthz", "/readyz", "/metrics") * 4:
            assert (await api.client.get(path)).status_code == 200


async def test_two_api_replicas_share_the_limits_through_redis(api_settings: ApiSettings, user: uuid.UUID) -> None:
    await shared_between_two_replicas(api_settings.model_copy(update=LIMITED), user)


async def test_without_redis_two_replicas_share_the_limits_through_the_database(
        api_settings: ApiSettings, user: uuid.UUID, tmp_path: Path) -> None:
    settings = api_settings.model_copy(update={**LIMITED, "redis_url": None,
                                               "database_url": f"sqlite:///{tmp_path / 'ourvidz.db'}"})
    await shared_between_two_replicas(settings, user)


async def shared_between_two_replicas(settings: ApiSettings, user: uuid.UUID) -> None:
    async for first in serve_api(settings):
        async for second in serve_api(settings):
            codes = [(await api.client.get("/api/me", headers=api.auth(user))).status_code
                     for api in (first, second, first, second)]
            assert codes == [200, 200, 200, 429]


async def test_limits_let_requests_through_while_redis_is_away(api_settings: ApiSettings, user: uuid.UUID) -> None:
    settings = api_settings.model_copy(update=LIMITED)
    async for api in serve_api(settings):
        api.state.limiter = RateLimiter(RedisCounters.from_url("redis://127.0.0.1:1/0"))  # nothing listens there
        codes = [(await api.client.get("/api/me", headers=api.auth(user))).status_code for _ in range(QUOTA + 2)]
        assert codes == [200] * (QUOTA + 2)


async def test_refusals_are_counted_by_reason(limited: Api, user: uuid.UUID) -> None:
    for _ in range(QUOTA + 2):
        await limited.client.get("/api/me", headers=limited.auth(user))
    assert 'ourvidz_refusals_total{reason="rate_limit"} 2.0' in (await limited.client.get("/metrics")).text
