"""Workers SIGKILLed at random points of their jobs, and replaced: no job is lost or completed twice.

Each worker is `python -m ourvidz worker` in a session of its own; SIGKILL takes it and its model process
at once, wherever they are (claiming, generating, encoding, uploading, calling back). Its heartbeat
expires, the sweeper hands its message back, and another worker runs the job (docs/lifecycle.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from chaos import (
    LONGER_CATALOG,
    Submitter,
    api_client,
    running_workers,
    served,
    settle,
    unfinished,
    wait_until,
)
from harness import Api
from invariants import audit, record, scaled
from processes import Proc, start_worker
from worker_harness import worker_settings

from edge_api.settings import ApiSettings
from jobs.tables import jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

WORKERS = 2


async def _running_jobs(api: Api, worker_id: str) -> list[str]:
    async with api.state.engine.connect() as conn:
        rows = await conn.execute(sa.select(jobs.c.id).where(jobs.c.worker_id == worker_id,
                                                             jobs.c.status == "processing"))
        return [str(r.id) for r in rows]


@pytest.mark.parametrize("store", ["postgres-redis", "embedded"])
async def test_sigkilled_workers_lose_no_job_and_complete_none_twice(
        chaos_settings: ApiSettings, tiny_checkpoints: Path, tmp_path: Path, started: float, store: str) -> None:
    """`embedded`: the same against `ourvidz up`'s store, SQLite with the jobs table as the queue, shared by
    the API and the worker processes (WAL), one of them killed wherever it is, mid-write included."""
    total, kills = scaled(200), scaled(16)
    settings = chaos_settings.model_copy(update={"catalog_overrides": LONGER_CATALOG})
    if store == "embedded":
        settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'ourvidz.db'}",
                                               "redis_url": None})
    async with served(settings) as api:
        user = uuid.uuid4()
        await api.set_balance(user, 3 * total)

        async def new_worker(n: int) -> tuple[str, Proc]:
            settings = worker_settings(api, tiny_checkpoints, tmp_path / f"work{n}", queues=["sdxl"],
                                       heartbeat_ttl_seconds=1.0, database_url=api.settings.database_url)
            return settings.worker_id, await start_worker(settings, tmp_path / f"worker{n}.log")

        workers = [await new_worker(n) for n in range(WORKERS)]
        started_workers = WORKERS
        mid_job = 0
        try:
            async with api_client(api) as client:
                submitter = Submitter(client, api.state.engine, user)
                for _ in range(total):
                    await submitter.submit()
            for _ in range(kills):
                # Whichever worker has a job first dies: none waits for a fresh one to load its models.
                busy_slots: list[int] = []

                async def someone_busy(busy_slots: list[int] = busy_slots) -> bool:
                    busy_slots[:] = [n for n, (w, _) in enumerate(workers) if await _running_jobs(api, w)]
                    return bool(busy_slots)

                await wait_until(someone_busy, 300, "no worker took a job (see the worker logs)", every=0.02)
                slot = random.choice(busy_slots)
                worker_id, proc = workers[slot]
                await asyncio.sleep(random.uniform(0.0, 0.4))  # anywhere in the job: generating, uploading, ...
                running = await _running_jobs(api, worker_id)
                proc.signal(signal.SIGKILL)
                await proc.process.wait()
                mid_job += bool(running)
                workers[slot] = await new_worker(started_workers)
                started_workers += 1

            async def drained() -> bool:
                return await unfinished(api.state.engine) == 0

            await wait_until(drained, 600, "the replacement workers did not finish the jobs", every=0.25)
        finally:
            for _, proc in workers:
                await proc.stop()
        await settle(api.state.engine)
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
        scenario = "worker-sigkill" if store == "postgres-redis" else "worker-sigkill-embedded"
        record(scenario, figures, started, kills=kills, kills_mid_job=mid_job, workers_started=started_workers)


async def test_a_model_process_that_dies_mid_job_is_restarted_and_its_job_rerun(
        chaos_settings: ApiSettings, tiny_checkpoints: Path, tmp_path: Path, started: float) -> None:
    """The reference's "GPU memory issues: worker auto-restart": the model process dies (CUDA OOM, a segfault),
    the worker hands its job back and starts a new one; nothing is lost."""
    total, kills = scaled(60), scaled(5)
    async with served(chaos_settings.model_copy(update={"catalog_overrides": LONGER_CATALOG})) as api:
        user = uuid.uuid4()
        await api.set_balance(user, 3 * total)
        async with api_client(api) as client, running_workers(api, tiny_checkpoints, tmp_path, 1,
                                                              queues=["sdxl"]) as workers:
            [worker] = workers
            submitter = Submitter(client, api.state.engine, user)
            for _ in range(total):
                await submitter.submit()
            for _ in range(kills):
                async def busy() -> bool:
                    return bool(await _running_jobs(api, worker.worker_id)) and worker.child.pid is not None

                await wait_until(busy, 300, "the worker never took a job", every=0.02)
                await asyncio.sleep(random.uniform(0.0, 0.3))
                pid = worker.child.pid
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)

                async def restarted(pid: int | None = pid) -> bool:
                    return worker.child.pid not in (None, pid)

                await wait_until(restarted, 300, "the model process was not restarted")
            await settle(api.state.engine)
            restarts, handed_back = worker.stats.child_restarts, worker.stats.handed_back
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
        record("model-process-deaths", figures, started, kills=kills, child_restarts=restarts,
               jobs_handed_back=handed_back)
