"""The serverless path under faults: jobs dispatched to a RunPod endpoint (tests/fake_runpod.py) and run by
runpod-python's production job loop around our handler, while RunPod stops jobs mid-run (cancels,
execution timeouts), delivers finished jobs a second time, refuses `/run` for a while, and the worker
process is SIGKILLed mid-job and replaced. Every accepted job must complete exactly once, charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from chaos import (
    FAULT_CATALOG,
    Submitter,
    api_client,
    describe_unfinished,
    eventually,
    served,
    settle,
    wait_until,
)
from fake_runpod import API_KEY, ENDPOINT, FakeRunPod, running_runpod
from invariants import audit, record, scaled
from processes import Proc, settings_env, start_process
from worker_harness import worker_settings

from edge_api.settings import ApiSettings
from handler.settings import WorkerSettings
from jobs.tables import jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Jobs long enough (about a second) for a stop or a kill to land mid-generation.
SLOWER_CATALOG = {**FAULT_CATALOG, "sdxl_image_fast": {"width": 192, "height": 192, "num_outputs": 2, "steps": 8}}


async def _start_endpoint_worker(settings: WorkerSettings, runpod: FakeRunPod, n: int, log: Path) -> Proc:
    env = {**settings_env(settings), **runpod.env(f"pod-{n}"), "RUNPOD_LOG_LEVEL": "WARN"}
    return await start_process(["-m", "handler.runpod_serverless"], env, log)


async def _mid_job(runpod: FakeRunPod) -> bool:
    """Whether a job is being run at RunPod (waited for a moment: the worker may be taking one)."""
    async def running() -> bool:
        return any(j.status == "IN_PROGRESS" for j in runpod.jobs.values())

    return await eventually(running, 5)


async def test_dispatched_jobs_survive_runpod_stops_duplicates_outages_and_worker_kills(
        chaos_settings: ApiSettings, tiny_checkpoints: Path, tmp_path: Path, started: float) -> None:
    total = scaled(40)
    settings = chaos_settings.model_copy(update={
        "catalog_overrides": SLOWER_CATALOG, "lease_seconds": 3.0, "runpod_reconcile_seconds": 1.0,
        "runpod_start_timeout_seconds": 60.0,
        "runpod_endpoints": {"sdxl_queue": ENDPOINT}, "runpod_api_key": API_KEY})
    stops = duplicates = kills = 0
    async with running_runpod() as runpod:
        settings = settings.model_copy(update={"runpod_api_url": f"{runpod.url}/v2"})
        async with served(settings) as api:
            user = uuid.uuid4()
            await api.set_balance(user, 3 * total)
            worker = worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["sdxl"],
                                     keepalive_seconds=0.5, progress_interval_seconds=0.2)
            generation = 0
            proc = await _start_endpoint_worker(worker, runpod, generation, tmp_path / "endpoint0.log")
            stack = contextlib.AsyncExitStack()
            try:
                client = await stack.enter_async_context(api_client(api))
                submitter = Submitter(client, api.state.engine, user, job_types=("sdxl_image_fast",))
                for n in range(total):
                    if n % 10 == 3:
                        runpod.refusals[:] = [503] * 8  # the endpoint away for longer than the client's retries
                    await submitter.submit()
                    if n % 4 == 1 and await _mid_job(runpod):
                        await asyncio.sleep(random.uniform(0.0, 0.3))
                        running = [j for j in runpod.jobs.values() if j.status == "IN_PROGRESS"]
                        if running:
                            runpod.stop(running[0].id, random.choice(["CANCELLED", "TIMED_OUT"]))
                            stops += 1
                    elif n % 4 == 2:
                        finished = [j for j in runpod.jobs.values() if j.status == "COMPLETED"]
                        if finished:
                            await api.state.http.post(f"{runpod.url}/v2/{ENDPOINT}/run", headers={
                                "Authorization": f"Bearer {API_KEY}"}, json={
                                "input": random.choice(finished).input,
                                "policy": {"executionTimeout": 60_000, "ttl": 60_000}})
                            duplicates += 1
                    elif n % 10 == 7 and await _mid_job(runpod):
                        await asyncio.sleep(random.uniform(0.0, 0.3))
                        await proc.kill()  # the worker and its model process, mid-job
                        kills += 1
                        generation += 1
                        proc = await _start_endpoint_worker(worker, runpod, generation,
                                                            tmp_path / f"endpoint{generation}.log")
                    await asyncio.sleep(random.uniform(0.0, 0.3))

                async def drained() -> bool:
                    async with api.state.engine.connect() as conn:
                        return not (await conn.execute(sa.select(jobs.c.id).where(
                            jobs.c.status.in_(["queued", "processing"])))).first()

                try:
                    await wait_until(drained, scaled(120, 60), "the endpoint did not finish the jobs", every=0.25)
                except AssertionError as exc:
                    at_runpod = {j.id: (j.status, j.worker, j.input.get("id")) for j in runpod.jobs.values()
                                 if j.status not in ("COMPLETED", "FAILED", "CANCELLED")}
                    raise AssertionError(f"{exc}\n{await describe_unfinished(api.state.engine)}\n"
                                         f"at RunPod: {at_runpod}") from exc
            finally:
                await proc.stop(timeout=30)
                await stack.aclose()
            await settle(api.state.engine)
            figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: 3 * total},
                                  accepted=submitter.accepted.values())
            async with api.state.engine.connect() as conn:
                failed = int((await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                                 .where(jobs.c.status != "completed"))).scalar_one())
            figures.lost += failed  # every accepted job must complete: no fault here is the job's own
            figures.wrongly_accepted += submitter.half_created
            figures.problems.extend(runpod.problems)
            figures.wrongly_accepted += len(runpod.problems)
    record("serverless-faults", figures, started, runpod_stops=stops, duplicate_deliveries=duplicates,
           worker_kills=kills, refused_503=submitter.refusals.get(503, 0), dispatches=len(runpod.jobs),
           runpod_retries=runpod.retried)
