"""The worker under faults: a dead child, a SIGKILLed worker, a flaky storage, an API that is down for a while."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fake_supabase import KEY, error_body, running_fake
from harness import Api, serve_api
from processes import worker_process
from servers import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from worker_harness import SMALL, small_settings, wait_for_status, worker_settings

from edge_api.settings import ApiSettings
from handler.main import open_worker, run_worker
from jobs.tables import assets, callback_receipts, credit_ledger, jobs

pytestmark = pytest.mark.slow

# SDXL slow enough (a few seconds) that a fault can land in the middle of a job.
SLOW_SDXL = {**SMALL, "sdxl_image_fast": {"width": 256, "height": 256, "steps": 24}}


async def _ledger_sum(api: Api, job_id: str) -> int:
    query = sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.amount), 0)).where(
        credit_ledger.c.job_id == uuid.UUID(job_id))
    async with api.state.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def _count(api: Api, table: sa.Table, job_id: str, **where: Any) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(table.c.job_id == uuid.UUID(job_id))
    for column, value in where.items():
        query = query.where(sa.cast(table.c[column], sa.Text).contains(value))
    async with api.state.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def _wait_running(api: Api, user: uuid.UUID, job_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        job = (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()
        if job["status"] == "processing" and job["progress"] > 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never got going")


@pytest.fixture
async def slow_api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async for harness in serve_api(small_settings(api_settings, catalog_overrides=SLOW_SDXL)):
        yield harness


def _child_processes() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "ourvidz-child"]


@pytest.mark.parametrize(("max_attempts", "outcome"), [(3, "completed"), (1, "failed")])
async def test_killing_the_child_mid_job_reruns_or_fails_the_job_and_never_loses_it(
        api_settings: ApiSettings, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path,
        max_attempts: int, outcome: str) -> None:
    settings = small_settings(api_settings, catalog_overrides=SLOW_SDXL, max_attempts=max_attempts)
    async for api in serve_api(settings):
        await api.set_balance(user, 5)
        job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
        async with open_worker(worker_settings(api, tiny_checkpoints, tmp_path / "work")) as worker:
            running = asyncio.create_task(worker.run())
            await _wait_running(api, user, job_id)
            [child] = _child_processes()
            os.kill(child.pid or 0, signal.SIGKILL)

            job = await wait_for_status(api, user, job_id, {"completed", "failed"})
            worker.request_stop()
            stats = await running

        assert job["status"] == outcome
        assert stats.child_restarts == 1 and stats.handed_back == 1
        if outcome == "completed":
            assert job["attempts"] == 2 and len(job["assets"]) == 6
            assert await _ledger_sum(api, job_id) == -1
        else:
            assert "tries" in job["error_message"]
            assert await _ledger_sum(api, job_id) == 0  # refunded
            assert (await api.client.get("/api/jobs/" + job_id, headers=api.auth(user))).json()["assets"] == []


async def test_a_sigkilled_worker_loses_nothing_and_another_completes_the_job_exactly_once(
        slow_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = slow_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    doomed = worker_settings(api, tiny_checkpoints, tmp_path / "work1", heartbeat_ttl_seconds=1.0, queues=["sdxl"])
    async with worker_process(doomed, tmp_path / "worker1.log") as process:
        await _wait_running(api, user, job_id)
        process.signal(signal.SIGKILL)  # the worker and its child, mid-job

    while doomed.worker_id not in await api.state.queue.dead_workers():
        await asyncio.sleep(0.1)  # its heartbeat has to expire first
    assert await api.state.sweeper.sweep()
    stats = await run_worker(worker_settings(api, tiny_checkpoints, tmp_path / "work2"), burst=True)

    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed" and job["attempts"] == 2
    assert stats.completed == 1
    assert await _count(api, assets, job_id) == 6
    assert await _count(api, callback_receipts, job_id, response='"completed"') == 1
    assert await _ledger_sum(api, job_id) == -1
    assert await api.state.queue.job_ids() == set()


async def test_sigterm_to_the_workers_process_group_lets_the_running_job_finish(
        slow_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    """A stop signal for the whole group (a terminal's, or `kill -- -PGID`) reaches the model process too:
    it must leave the stopping to the worker, which finishes the running job within its grace period."""
    api = slow_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", shutdown_grace_seconds=120.0, queues=["sdxl"])
    async with worker_process(settings, tmp_path / "worker.log") as process:
        await _wait_running(api, user, job_id)
        process.signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.process.wait(), 120)
    job = await wait_for_status(api, user, job_id, {"completed", "failed", "queued"}, timeout=5)
    assert job["status"] == "completed" and job["attempts"] == 1, (tmp_path / "worker.log").read_text()[-2000:]
    assert code == 0
    assert await api.state.queue.job_ids() == set()


async def test_an_upload_that_fails_twice_then_succeeds_completes_the_job(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "image_fast")).json()["job"]["id"]
    with running_fake() as supabase:
        for _ in range(2):
            supabase.answer_next(500, error_body("500", "internal", "storage is having a moment"))
        settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", storage="supabase",
                                   supabase_url=supabase.url, supabase_service_key=KEY, queues=["wan"])
        stats = await run_worker(settings, burst=True)
    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed", job["error_message"]
    assert stats.completed == 1
    uploads = [r for r in supabase.requests if r.method == "POST"]
    assert len(uploads) == 3
    assert len({r.path for r in uploads}) == 1  # the same object, retried
    assert supabase.objects[("image_fast", job["metadata"]["primary_asset"])][1] == "image/png"


def _is_terminal(body: bytes) -> bool:
    return b'"status":"completed"' in body


def _is_claim(body: bytes) -> bool:
    return b'"status":"processing"' in body and b'"attempt"' not in body


def _flaky_api_proxy(target: str, refusals: int, seen: list[dict[str, str]], *,
                     refused: Callable[[bytes], bool] = _is_terminal, forward_refused: bool = False) -> Starlette:
    """Forwards callbacks to the API, but answers 503 to the first `refusals` callbacks that `refused` picks
    (after forwarding them anyway with `forward_refused`: the API acted, only its answer was lost)."""

    async def post(request: Request, body: bytes) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.post(target + request.url.path, content=body, headers=dict(request.headers))

    async def forward(request: Request) -> Response:
        body = await request.body()
        if refused(body):
            seen.append(dict(request.headers))
            if len(seen) <= refusals:
                if forward_refused:
                    await post(request, body)
                return Response(status_code=503)
        answer = await post(request, body)
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    return Starlette(routes=[Route("/api/job-callback", forward, methods=["POST"])])


@contextlib.asynccontextmanager
async def _serving(app: Starlette) -> AsyncIterator[str]:
    """`app` under uvicorn on a free port for the block; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def test_a_callback_endpoint_down_for_a_while_still_receives_the_terminal_callback(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    seen: list[dict[str, str]] = []
    async with _serving(_flaky_api_proxy(api.url, 4, seen)) as url:
        stats = await run_worker(worker_settings(api, tiny_checkpoints, tmp_path / "work", api_url=url), burst=True)
    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed" and stats.completed == 1
    assert len(seen) == 5  # four refusals, then delivered
    assert len({headers["webhook-id"] for headers in seen}) == 1  # one callback, retried


@pytest.mark.parametrize("claim_landed", [False, True], ids=["claim-lost", "answer-lost"])
async def test_a_claim_never_answered_gives_the_message_back_and_the_job_completes_once(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path, claim_landed: bool) -> None:
    """The `processing` callback meets 503s past the callback deadline (an API whose database is away): the
    worker must not keep the message in its processing list with nobody on it, where the sweeper counts it
    as held. With `claim_landed` the API did claim the job and only its answers were lost."""
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    seen: list[dict[str, str]] = []
    proxy = _flaky_api_proxy(api.url, 8, seen, refused=_is_claim, forward_refused=claim_landed)
    async with _serving(proxy) as url:
        settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", api_url=url,
                                   callback_deadline_seconds=0.3)
        stats = await run_worker(settings, burst=True)
    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed", job["error_message"]
    assert stats.completed == 1
    assert len(seen) > 8  # the claim was tried again after the refusals, in more than one delivery
    assert len({headers["webhook-id"] for headers in seen}) > 1
    assert await _attempts(api, job_id) == 1  # a claim that landed is taken up again by the same worker
    assert await _ledger_sum(api, job_id) == -1
    assert await api.state.queue.job_ids() == set()


async def test_a_message_left_in_a_live_workers_processing_list_is_given_back_and_run(
        small_api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    """A message in the worker's own processing list that no task of it works on (an ack or a hand-back that
    failed while Redis was away) goes back to its queue while the worker lives, and its job runs."""
    api = small_api
    await api.set_balance(user, 5)
    job_id = (await api.submit(user, "sdxl_image_fast")).json()["job"]["id"]
    settings = worker_settings(api, tiny_checkpoints, tmp_path / "work", heartbeat_ttl_seconds=0.6)
    stranded = await api.state.queue.claim(["sdxl_queue"], settings.worker_id, 1.0)
    assert stranded is not None and job_id in stranded
    async with open_worker(settings) as worker:
        running = asyncio.create_task(worker.run())
        try:
            job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=60)
        finally:
            worker.request_stop()
            stats = await running
    assert job["status"] == "completed", job["error_message"]
    assert stats.completed == 1
    assert await api.state.queue.job_ids() == set()


async def _attempts(api: Api, job_id: str) -> int:
    async with api.state.engine.connect() as conn:
        return int((await conn.execute(sa.select(jobs.c.attempts).where(jobs.c.id == uuid.UUID(job_id)))).scalar_one())
