"""The CLI's client against a real API: a refusal is explained with when to retry, and a job is followed
through the rate limit rather than failing on it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from harness import Api, serve_api

from edge_api.settings import ApiSettings
from ourvidz.client import run_submit


async def test_a_refused_submit_says_why_and_when_to_retry(api_settings: ApiSettings, user: uuid.UUID,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    async for api in serve_api(api_settings.model_copy(update={"user_active_jobs": {"sdxl_queue": 1}})):
        await api.set_balance(user, 5)
        assert await run_submit(api.url, api.token(user), "sdxl_image_fast", "a fox", False, None, None) == 0
        assert await run_submit(api.url, api.token(user), "sdxl_image_fast", "a fox", False, None, None) == 1
    printed = capsys.readouterr().out
    assert "429 Too many active jobs" in printed and "You can retry in" in printed


async def test_following_a_job_waits_out_the_rate_limit(api_settings: ApiSettings, user: uuid.UUID,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    settings = api_settings.model_copy(update={"rate_limit_requests": 1, "rate_limit_window_seconds": 1})
    async for api in serve_api(settings):
        await api.set_balance(user, 5)
        follow = run_submit(api.url, api.token(user), "sdxl_image_fast", "a fox", True, None, None)
        task = asyncio.create_task(follow)
        job = await wait_for_job(api, user)
        for _ in range(3):  # polled past the limit meanwhile
            await asyncio.sleep(0.6)
        await api.claim(job)
        await api.callback({"job_id": job, "status": "failed", "attempt": 1, "error_message": "stopped here"})
        assert await asyncio.wait_for(task, 30) == 1  # it saw the end, instead of failing on a 429
    assert "stopped here" in capsys.readouterr().out


async def wait_for_job(api: Api, user: uuid.UUID) -> str:
    for _ in range(200):
        rows = await api.job_rows(user)
        if rows:
            return str(rows[0]["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("no job was submitted")
