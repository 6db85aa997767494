"""The app's webhooks under faults: a receiver that is slow, fails and goes away, and an API SIGKILLed mid-delivery.

Jobs with a webhook for all five events move by the worker's signed callbacks (some complete, some
fail, some are canceled) while the API, in a process of its own, is killed at random moments, often
with deliveries in flight, and restarted. The receiver verifies every signature with
`standardwebhooks`, stalls some answers past the API's timeout, fails others with 500 and has
outages. At the end every event of every job has arrived, in order, once per `webhook-id`, and
nothing arrived that was not sent to that URL.
"""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from chaos import start_api
from invariants import Figures, audit, record, scaled
from processes import Proc
from servers import free_port
from webhook_receiver import running_receiver

from edge_api.auth import mint_token
from edge_api.settings import ApiSettings
from jobs.db import open_engine, upsert
from jobs.tables import profiles
from jobs.webhooks import signed_headers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EVENTS = ["queued", "processing", "completed", "failed", "canceled"]
ENDINGS = {"completed": ["queued", "processing", "completed"], "failed": ["queued", "processing", "failed"],
           "canceled": ["queued", "canceled"]}


class Driver:
    """Moves jobs through the API the way workers and the app do, retrying through the API's deaths."""

    def __init__(self, client: httpx.AsyncClient, settings: ApiSettings, token: str) -> None:
        self.client = client
        self.settings = settings
        self.token = token
        self.connection_errors = 0

    async def _post(self, path: str, body: dict[str, object], headers: dict[str, str]) -> httpx.Response:
        while True:
            try:
                response = await self.client.post(path, json=body, headers=headers)
            except httpx.TransportError:
                self.connection_errors += 1
                await asyncio.sleep(0.1)
                continue
            if response.status_code != 503:
                return response
            await asyncio.sleep(0.1)

    async def submit(self, url: str, key: str) -> str:
        body = {"jobType": "sdxl_image_fast", "metadata": {"prompt": "a fox"}, "webhook": url,
                "webhookEvents": EVENTS}
        response = await self._post("/api/queue-job", body, {"Authorization": f"Bearer {self.token}",
                                                               "Idempotency-Key": key})
        assert response.status_code == 200, response.text
        return str(response.json()["job"]["id"])

    async def callback(self, body: dict[str, object]) -> None:
        msg_id = f"msg_{uuid.uuid4().hex}"  # one id for every retry of this report: idempotent
        while True:
            data = httpx.Request("POST", "/", json=body).content
            headers = signed_headers(self.settings.callback_secret, data, msg_id)
            try:
                response = await self.client.post("/api/job-callback", content=data, headers=headers)
            except httpx.TransportError:
                self.connection_errors += 1
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 503:
                await asyncio.sleep(0.1)
                continue
            assert response.status_code == 200, response.text
            return

    async def run(self, job_id: str, ending: str, user: uuid.UUID, files_root: Path) -> None:
        await asyncio.sleep(random.uniform(0, 0.5))
        if ending == "canceled":
            response = await self._post(f"/api/jobs/{job_id}/cancel", {}, {"Authorization": f"Bearer {self.token}"})
            # A retry after the API died between its commit and its answer finds the cancel already done.
            done_before = response.status_code == 409 and response.json()["error"] == "Job is canceled"
            assert response.status_code == 200 or done_before, response.text
            return
        await self.callback({"job_id": job_id, "status": "processing", "worker_id": "w"})
        await asyncio.sleep(random.uniform(0, 0.5))
        if ending == "failed":
            await self.callback({"job_id": job_id, "status": "failed", "attempt": 1, "error_message": "no"})
            return
        paths = [f"{user}/{job_id}_{n}.png" for n in range(6)]
        for path in paths:
            target = files_root / "sdxl_image_fast" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\x89PNG fake")
        await self.callback({"job_id": job_id, "status": "completed", "attempt": 1, "assets": paths})


async def test_webhooks_lose_duplicate_reorder_and_misdeliver_nothing_through_api_kills_and_receiver_faults(
        api_settings: ApiSettings, tmp_path: Path, started: float) -> None:
    total, kills = scaled(60), scaled(8)
    user = uuid.uuid4()
    engine = open_engine(api_settings.database_url)
    port = free_port()
    faults = {"stalls": 0, "errors_500": 0, "outage_refusals": 0}
    outage = asyncio.Event()

    async def behaviour(path: str) -> int:
        if outage.is_set():
            faults["outage_refusals"] += 1
            return 503
        roll = random.random()
        if roll < 0.1:
            faults["stalls"] += 1
            await asyncio.sleep(1.5)  # past the API's 1 s timeout: the API records a failure and retries
            return 200
        if roll < 0.25:
            faults["errors_500"] += 1
            return 500
        return 200

    api: Proc | None = None
    try:
        async with engine.begin() as conn:
            await conn.execute(upsert(engine, profiles).values(id=user, token_balance=total))
        async with running_receiver() as receiver, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
            receiver.behaviour = behaviour
            settings = api_settings.model_copy(update={
                "webhook_secret": receiver.secret, "webhook_poll_seconds": 0.05, "webhook_timeout_seconds": 1.0,
                "webhook_retry_base_seconds": 0.1, "webhook_retry_max_interval_seconds": 1.0,
                "sweeper_enabled": True, "sweep_interval_seconds": 0.5})
            log = tmp_path / "api.log"
            api = await start_api(settings, port, log)
            driver = Driver(client, settings, _token(settings, user))
            endings = [random.choice(list(ENDINGS)) for _ in range(total)]
            jobs = [await driver.submit(receiver.at(f"/hook/{n}"), f"key-{n}") for n in range(total)]
            work = asyncio.gather(*(driver.run(job, ending, user, settings.storage_dir)
                                    for job, ending in zip(jobs, endings, strict=True)))
            kills_mid_delivery = 0

            async def outages() -> None:
                while True:
                    await asyncio.sleep(random.uniform(1.0, 3.0))
                    outage.set()
                    await asyncio.sleep(1.0)
                    outage.clear()

            flapping = asyncio.create_task(outages())
            for _ in range(kills):
                await asyncio.sleep(random.uniform(0.2, 1.0))
                kills_mid_delivery += receiver.open_requests > 0
                assert api is not None
                api.signal(signal.SIGKILL)
                await api.process.wait()
                api = await start_api(settings, port, log)
            await work
            expected = {job: ENDINGS[ending] for job, ending in zip(jobs, endings, strict=True)}
            wanted = sum(len(v) for v in expected.values())
            for _ in range(1200):
                if len(receiver.events()) >= wanted:
                    break
                await asyncio.sleep(0.1)
            flapping.cancel()
            outage.clear()
            await asyncio.sleep(1.0)  # anything still to come (a duplicate) arrives now

            got: dict[str, list[str]] = {}
            for job, event in receiver.events():
                got.setdefault(job, []).append(event)
            path_of = {job: f"/hook/{n}" for n, job in enumerate(jobs)}
            lost = sum(len([e for e in seq if e not in got.get(job, [])]) for job, seq in expected.items())
            duplicated = sum(len(seq) - len(set(seq)) for seq in got.values())
            out_of_order = sum(1 for job, seq in expected.items() if [e for e in seq if e in got.get(job, [])]
                               != got.get(job, []))
            wrongly_delivered = receiver.bad_signatures + sum(
                1 for d in receiver.accepted if path_of.get(str(d.body["id"])) != d.path or d.body["status"] != d.event)
            figures: Figures = await audit(engine, settings.catalog, starting_balances={user: total},
                                           accepted=jobs)
            figures.lost += lost
            figures.duplicates += duplicated
            assert api is not None
            api.signal(signal.SIGTERM)
            await api.process.wait()
        record("webhook-faults", figures, started, events=wanted, kills=kills, kills_mid_delivery=kills_mid_delivery,
               redeliveries=receiver.duplicates(), out_of_order=out_of_order, wrongly_delivered=wrongly_delivered,
               connection_errors=driver.connection_errors, **faults)
        assert out_of_order == 0 and wrongly_delivered == 0
    finally:
        if api is not None and api.process.returncode is None:  # a failed check must not leave the API running
            api.signal(signal.SIGKILL)
            await api.process.wait()
        await engine.dispose()


def _token(settings: ApiSettings, user: uuid.UUID) -> str:
    assert settings.jwt_secret is not None
    return mint_token(settings.jwt_secret, user, ttl=3600)
