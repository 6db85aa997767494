"""A worker that hangs (SIGSTOP) without calling back: its job fails at its deadline with exactly one refund,
and when the worker wakes (SIGCONT) and reports its stale result, nothing changes.

The hang outlasts the job's deadline but not the worker's heartbeat TTL, as a worker stuck in a
driver call would: the deadline, not the dead-worker pass, must end the job (docs/lifecycle.md: "fails a job
... after its deadline ... and refunds it").
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from chaos import LONGER_CATALOG, Submitter, api_client, eventually, served, settle, wait_until
from harness import Api
from invariants import audit, record, scaled
from processes import Proc, start_worker
from worker_harness import worker_settings

from edge_api.settings import ApiSettings
from jobs.queue import job_id_of
from jobs.tables import assets, callback_receipts, credit_ledger, jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEADLINE = 5.0  # seconds: well above a tiny job's time on a busy 2-core machine, so only hung jobs reach it
WORKERS = 2


async def _running(api: Api, worker_id: str) -> list[uuid.UUID]:
    async with api.state.engine.connect() as conn:
        return [r.id for r in await conn.execute(sa.select(jobs.c.id).where(
            jobs.c.worker_id == worker_id, jobs.c.status == "processing"))]


async def _row(api: Api, job_id: uuid.UUID) -> dict[str, object]:
    async with api.state.engine.connect() as conn:
        return dict((await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).mappings().one())


async def _count(api: Api, table: sa.Table, job_id: uuid.UUID, *where: sa.ColumnElement[bool]) -> int:
    async with api.state.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table)
                                       .where(table.c.job_id == job_id, *where))).scalar_one())


async def test_a_hung_worker_fails_its_job_at_the_deadline_once_and_its_late_callback_changes_nothing(
        chaos_settings: ApiSettings, tiny_checkpoints: Path, tmp_path: Path, started: float) -> None:
    rounds = scaled(5)
    settings = chaos_settings.model_copy(update={"job_timeout_seconds": DEADLINE,
                                                 "catalog_overrides": LONGER_CATALOG})
    async with served(settings) as api:
        user = uuid.uuid4()
        total = rounds * WORKERS * 5
        await api.set_balance(user, 3 * total)
        workers: list[tuple[str, Proc]] = []
        for n in range(WORKERS):
            worker = worker_settings(api, tiny_checkpoints, tmp_path / f"work{n}", queues=["sdxl"],
                                     heartbeat_ttl_seconds=60.0)
            workers.append((worker.worker_id, await start_worker(worker, tmp_path / f"worker{n}.log")))
        hung: list[uuid.UUID] = []
        wrong: list[str] = []
        late_refused = 0
        files_left = 0
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(api_client(api))
            submitter = Submitter(client, api.state.engine, user)
            for _ in range(rounds):
                for _ in range(total // rounds):  # work for this round: the tiny jobs are gone in a second
                    await submitter.submit()
                # Both workers hang at random points of a job.
                frozen: list[tuple[str, Proc, list[uuid.UUID]]] = []
                async def anyone_busy() -> bool:
                    return any([bool(await _running(api, w)) for w, _ in workers])

                await wait_until(anyone_busy, 300, "no worker took a job (see the worker logs)", every=0.02)
                for worker_id, proc in workers:
                    async def busy(worker_id: str = worker_id) -> bool:
                        return bool(await _running(api, worker_id))

                    if not await eventually(busy, 3):  # the other worker took the round's last jobs
                        continue
                    await asyncio.sleep(random.uniform(0.0, 0.3))
                    proc.signal(signal.SIGSTOP)
                    frozen.append((worker_id, proc, await _running(api, worker_id)))
                stuck = [job_id for _, _, held in frozen for job_id in held]

                async def all_ended(stuck: list[uuid.UUID] = stuck) -> bool:
                    return all([(await _row(api, j))["status"] in ("completed", "failed") for j in stuck])

                await wait_until(all_ended, 120, "a hung job did not fail at its deadline", every=0.2)
                # A completion already on its way when the worker stopped lands anyway: that job was not hung.
                stuck = [j for j in stuck if (await _row(api, j))["status"] == "failed"]
                hung.extend(stuck)
                for job_id in stuck:
                    row = await _row(api, job_id)
                    if "timed out" not in str(row["error_message"]):
                        wrong.append(f"{job_id} failed with {row['error_message']!r}")
                for _, proc, _ in frozen:
                    proc.signal(signal.SIGCONT)
                for worker_id, _, held in frozen:
                    # The woken worker finishes, reports, and lets go of the message only once answered.
                    async def let_go(worker_id: str = worker_id, held: list[uuid.UUID] = held) -> bool:
                        holding = {job_id_of(p) for p in await api.state.queue.held(worker_id)}
                        return not holding & {str(j) for j in held}

                    await wait_until(let_go, 120, f"the woken worker {worker_id} never reported its jobs")
                for job_id in stuck:
                    row = await _row(api, job_id)
                    refused = await _count(api, callback_receipts, job_id, callback_receipts.c.status_code == 409)
                    late_refused += bool(refused)
                    if row["status"] != "failed" or await _count(api, assets, job_id):
                        wrong.append(f"{job_id}: {row['status']} with assets after the late callback")
                    refunds = await _count(api, credit_ledger, job_id, credit_ledger.c.kind == "refund")
                    if refunds != 1:
                        wrong.append(f"{job_id}: {refunds} refunds after the late callback")
                    # The refused completion's files are removed before the worker gets its answer.
                    left = list(Path(api.settings.storage_dir).glob(f"*/{user}/{job_id}_*"))
                    files_left += len(left)

            async def drained() -> bool:
                async with api.state.engine.connect() as conn:
                    return not (await conn.execute(sa.select(jobs.c.id).where(
                        jobs.c.status.in_(["queued", "processing"])))).first()

            await wait_until(drained, 600, "the workers did not finish the other jobs", every=0.25)
        finally:
            for _, proc in workers:
                await proc.stop()
            await stack.aclose()
        await settle(api.state.engine)
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
        figures.problems.extend(wrong)
        figures.missing_refunds += len(wrong)
        figures.orphan_assets += files_left  # files nothing links: a broken promise like an asset row without a job
        record("hung-worker-deadline", figures, started, hung_jobs=len(hung), deadline_seconds=DEADLINE,
               late_callbacks_refused=late_refused, late_files_left=files_left)
