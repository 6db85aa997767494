"""The receiver of docs/api.md's Webhooks section, run as written, gets a job's events and verifies them."""

from __future__ import annotations

import re
import types
import uuid
from pathlib import Path

import pytest
from harness import serve_api, serve_asgi
from webhook_receiver import settled_log, wait_for

from edge_api.settings import ApiSettings
from jobs.webhooks import new_secret

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def receiver_module(secret: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    [code] = re.findall(r"```python\n(# receiver\.py\n.*?)```", DOC, flags=re.DOTALL)
    monkeypatch.setenv("OURVIDZ_WEBHOOK_SECRET", secret)
    module = types.ModuleType("receiver")
    exec(compile(code, "docs/api.md#receiver.py", "exec"), module.__dict__)  # the documented code, as written
    return module


async def test_the_documented_receiver_verifies_and_handles_each_event_once(
        api_settings: ApiSettings, user: uuid.UUID, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    secret = new_secret()
    receiver = receiver_module(secret, monkeypatch)
    settings = api_settings.model_copy(update={"webhook_secret": secret, "webhook_poll_seconds": 0.05})
    async with serve_asgi(receiver.app) as url:
        async for api in serve_api(settings):
            await api.set_balance(user, 5)
            response = await api.client.post("/api/queue-job", headers=api.auth(user), json={
                "jobType": "sdxl_image_fast", "metadata": {"prompt": "a fox"}, "webhook": f"{url}/ourvidz",
                "webhookEvents": ["queued", "canceled"]})
            assert response.status_code == 200, response.text
            job_id = response.json()["job"]["id"]
            assert (await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))).status_code == 200
            await wait_for(lambda: len(receiver.handled) == 2, what="both events handled")
            log = await settled_log(api, user, job_id)
    assert {d["webhook_id"] for d in log["deliveries"]} == receiver.handled
    assert [d["state"] for d in log["deliveries"]] == ["delivered", "delivered"]
    printed = capsys.readouterr().out
    assert f"{job_id} queued []" in printed and f"{job_id} canceled []" in printed


async def test_the_documented_receiver_refuses_a_forged_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from jobs.webhooks import signed_headers

    receiver = receiver_module(new_secret(), monkeypatch)
    async with serve_asgi(receiver.app) as url, httpx.AsyncClient() as client:
        body = b'{"id": "x", "status": "completed", "assets": []}'
        forged = await client.post(f"{url}/ourvidz", content=body, headers=signed_headers(new_secret(), body, "msg_1"))
    assert forged.status_code == 400 and receiver.handled == set()
