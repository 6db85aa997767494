"""The tools of the fault tests: a TCP proxy that can be cut or slowed, processes to kill, a client that retries.

Everything here drives real parts (the API over HTTP, Redis, Postgres, worker processes); nothing is
mocked. Processes started here are stopped by their own ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from diagnostics import await_chains
from harness import JWT_SECRET, Api, serve_api
from invariants import Figures, audit
from processes import Proc, settings_env, start_process
from proxy import TcpProxy
from sqlalchemy.ext.asyncio import AsyncEngine
from worker_harness import SMALL

from edge_api.auth import mint_token
from edge_api.settings import ApiSettings
from jobs.cancel import cancel_and_wait
from jobs.status import JobStatus
from jobs.tables import jobs

# SMALL's sizes and steps, with fewer SDXL images per job: the faults are the point, not the pixels.
FAULT_CATALOG = {**SMALL, "sdxl_image_fast": {"width": 64, "height": 64, "num_outputs": 2},
                 "sdxl_image_high": {"width": 64, "height": 64, "num_outputs": 1}}
# Where a fault must land inside a job, half the jobs take long enough to be hit (~0.3 s instead of ~0.06 s).
LONGER_CATALOG = {**FAULT_CATALOG, "sdxl_image_fast": {"width": 128, "height": 128, "num_outputs": 2, "steps": 4}}
TERMINAL = [s.value for s in JobStatus if s.is_terminal]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `check` until it is true; fail with `what` after `timeout` seconds (generous: others share the CPU)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"after {timeout:g} s: {what}")
        await asyncio.sleep(every)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.02) -> bool:
    """Whether `check` becomes true within `timeout` seconds."""
    try:
        await wait_until(check, timeout, "", every)
    except AssertionError:
        return False
    return True


async def unfinished(engine: AsyncEngine) -> int:
    """How many jobs are not terminal yet."""
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(jobs)
                                       .where(jobs.c.status.not_in(TERMINAL)))).scalar_one())


async def settle(engine: AsyncEngine, timeout: float = 600.0) -> None:
    """Wait until every job in the store is terminal (the sweeper and the workers do the work)."""
    async def done() -> bool:
        return await unfinished(engine) == 0

    try:
        await wait_until(done, timeout, "jobs are still not terminal", every=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{await describe_unfinished(engine)}") from None


async def describe_unfinished(engine: AsyncEngine, limit: int = 20) -> str:
    """The jobs that are not terminal, with what the sweeper looks at: for a failure message."""
    columns = [jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.worker_id, jobs.c.progress, jobs.c.created_at,
               jobs.c.enqueued_at, jobs.c.started_at, jobs.c.lease_until]
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(*columns).where(jobs.c.status.not_in(TERMINAL)).limit(limit))).all()
    return "\n".join(", ".join(f"{c.name}={v}" for c, v in zip(columns, row, strict=True)) for row in rows)


# --- The API in a process of its own, to SIGKILL ------------------------------------------------------


async def start_api(settings: ApiSettings, port: int, log: Path) -> Proc:
    """The API under uvicorn in a process of its own, ready when this returns."""
    proc = await start_process(["-m", "uvicorn", "edge_api.app:create_app", "--factory", "--host", "127.0.0.1",
                                "--port", str(port), "--log-level", "warning", "--no-access-log"],
                               settings_env(settings), log)
    async with httpx.AsyncClient(timeout=2.0) as client:
        async def ready() -> bool:
            if proc.process.returncode is not None:
                raise AssertionError(f"the API process exited with {proc.process.returncode}; see {log}")
            try:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, 120, f"the API on port {port} never became ready")
    return proc


# --- A client that submits like a careful app: one Idempotency-Key per job, retried on 503 -----------


@dataclass
class Submitter:
    """Submits jobs over HTTP and remembers what the API answered.

    A 503 must leave nothing behind: before retrying with the same key, the store is checked for a job
    with that key (a row there after a 503 is a wrongly accepted request). With `commit_may_be_lost`
    (Postgres went away during the statement), a row there is counted in `ambiguous` instead: the job
    was committed and only its answer lost, and the retry with the same key must return that job.
    """

    client: httpx.AsyncClient
    engine: AsyncEngine
    user: uuid.UUID
    job_types: tuple[str, ...] = ("sdxl_image_fast", "sdxl_image_high")
    accepted: dict[str, str] = field(default_factory=dict)  # idempotency key -> job id
    refusals: dict[int, int] = field(default_factory=dict)
    without_retry_after: int = 0
    half_created: int = 0
    left_by_429: int = 0  # a 429 must leave no job (and so no charge) behind
    connection_errors: int = 0
    commit_may_be_lost: bool = False
    ambiguous: dict[str, str] = field(default_factory=dict)  # idempotency key -> the job found after a 503
    token: str = ""

    def __post_init__(self) -> None:
        self.token = mint_token(JWT_SECRET, self.user)

    async def submit(self, key: str | None = None, max_tries: int = 200, retry_wait: float = 0.2) -> str | None:
        """Submit one job until accepted; returns its id (None if refused for good)."""
        key = key or uuid.uuid4().hex
        body = {"jobType": random.choice(self.job_types), "metadata": {"prompt": f"fault test {key}"}}
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": key}
        for _ in range(max_tries):
            try:
                response = await self.client.post("/api/queue-job", json=body, headers=headers)
            except httpx.HTTPError:
                self.connection_errors += 1
                await asyncio.sleep(retry_wait)
                continue
            if response.status_code == 200:
                job_id: str = response.json()["job"]["id"]
                if self.ambiguous.get(key, job_id) != job_id:
                    self.half_created += 1  # the retry made a second job instead of returning the first
                self.accepted[key] = job_id
                return job_id
            self.refusals[response.status_code] = self.refusals.get(response.status_code, 0) + 1
            if response.status_code == 429:
                self.without_retry_after += "retry-after" not in response.headers
                self.left_by_429 += await self._row_of(key) is not None
            if response.status_code != 503:
                return None
            if "retry-after" not in response.headers:
                self.without_retry_after += 1
            found = await self._row_of(key)
            if found is not None and self.commit_may_be_lost:
                self.ambiguous[key] = found
            elif found is not None:
                self.half_created += 1
            await asyncio.sleep(retry_wait)
        return None

    async def _row_of(self, key: str) -> str | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(sa.select(jobs.c.id).where(
                jobs.c.user_id == self.user, jobs.c.idempotency_key == key))).scalar()
        return None if found is None else str(found)


def api_client(api: Api) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.url, timeout=30.0, limits=httpx.Limits(max_connections=400))


# --- Jobs submitted while something breaks -------------------------------------------------------------

BREAKING_WORKERS = 2
BREAKING_SUBMITTERS = 4




async def submit_all(submitter: Submitter, total: int) -> None:
    """`total` jobs from a few concurrent clients, at about the pace the workers take them."""
    remaining = iter(range(total))

    async def client() -> None:
        for _ in remaining:
            await submitter.submit()
            await asyncio.sleep(random.uniform(0.0, 0.6))

    await asyncio.gather(*(client() for _ in range(BREAKING_SUBMITTERS)))


Breaker = Callable[[AsyncEngine, asyncio.Event], Awaitable[None]]


@dataclass
class Partitions:
    """A breaker: cuts `proxy` for 0.3 s to `longest` s at a time, every 0.5-2 s, until the jobs submitted
    have nearly all finished; `seconds` adds up the outages."""

    proxy: TcpProxy
    longest: float
    seconds: float = 0.0

    async def __call__(self, engine: AsyncEngine, submitted: asyncio.Event) -> None:
        while not (submitted.is_set() and await unfinished(engine) <= 2):
            await asyncio.sleep(random.uniform(0.5, 2.0))
            down = random.uniform(0.3, self.longest)
            self.proxy.cut()
            await asyncio.sleep(down)
            self.proxy.restore()
            self.seconds += down


async def jobs_while_breaking(settings: ApiSettings, total: int, checkpoints: Path, work_root: Path,
                              breaker: Breaker, mend: Callable[[], None], *, store: AsyncEngine | None = None,
                              commit_may_be_lost: bool = False) -> tuple[Submitter, Figures]:
    """Submit `total` jobs to two workers while `breaker` breaks something (until everything submitted has
    nearly finished), then `mend` it, let every job settle, and audit the store.

    `store`: the engine the test reads the store through, when the API's own goes through the fault.
    """
    async with served(settings) as api:
        engine = store or api.state.engine
        user = uuid.uuid4()
        await api.set_balance(user, 3 * total)
        async with api_client(api) as client, running_workers(api, checkpoints, work_root, BREAKING_WORKERS,
                                                              queues=["sdxl"], redis_url=settings.redis_url
                                                              ) as workers:
            submitter = Submitter(client, engine, user, commit_may_be_lost=commit_may_be_lost)
            submitted = asyncio.Event()
            breaking = asyncio.create_task(breaker(engine, submitted))
            try:
                await submit_all(submitter, total)
                submitted.set()
                await breaking
            finally:
                await stop_task(breaking)
                mend()
            await settle(engine)
        figures = await audit(engine, api.state.catalog, starting_balances={user: 3 * total},
                              accepted=submitter.accepted.values())
    figures.wrongly_accepted = submitter.half_created + submitter.without_retry_after
    figures.extra["messages_given_back"] = sum(w.stats.returned for w in workers)
    # Every submit gets a 200 or a 503 to retry; a 500 (or any other refusal) is a broken promise.
    figures.server_errors = sum(n for code, n in submitter.refusals.items() if code != 503)
    figures.lost += total - len(submitter.accepted)
    return submitter, figures


async def stop_task(task: asyncio.Task[Any]) -> None:
    """`cancel_and_wait`, and a failure of the task fails the test."""
    await cancel_and_wait(task)
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error


@dataclass(frozen=True)
class Endpoint:
    """What a worker needs to know of an API that runs in another process: its URL and its settings."""

    url: str
    settings: ApiSettings


@contextlib.asynccontextmanager
async def running_workers(api: Api | Endpoint, checkpoints: Path, work_root: Path, count: int = 1,
                          **changes: Any) -> AsyncIterator[list[Any]]:
    """`count` in-process workers (each with its own model process) serving until the block ends."""
    from worker_harness import worker_settings

    from handler.main import open_worker

    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(open_worker(worker_settings(
            api, checkpoints, work_root / f"worker{n}", **changes))) for n in range(count)]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            yield workers
        finally:
            for worker in workers:
                worker.request_stop()
            await _stopped(workers, tasks)


async def _stopped(workers: list[Any], tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for stopped workers to end; one that outlives its grace period by a minute fails the test with
    every coroutine's await chain, instead of hanging it until the test's timeout with nothing to go on."""
    limit = max(w.settings.shutdown_grace_seconds for w in workers) + 60.0
    _, pending = await asyncio.wait(tasks, timeout=limit)
    if pending:
        report = "\n".join([*(describe_worker(w) for w, t in zip(workers, tasks, strict=True) if t in pending),
                            "", await_chains()])
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=10.0)
        raise AssertionError(f"{len(pending)} worker(s) still running {limit:g} s after the stop:\n{report}")
    for task in tasks:
        error = task.exception()
        if error is not None:
            raise error


def describe_worker(worker: Any) -> str:
    jobs_ = {job_id: (run.phase.value, run.progress) for job_id, run in worker.lifecycle.running.items()}
    return (f"worker {worker.worker_id}: jobs(phase, progress) {jobs_}, tasks {len(worker._tasks)}, "
            f"gpu_free {worker.lifecycle.gpu_free.is_set()}, model process {worker.models.state.value} "
            f"pid {worker.child.pid}")


async def status_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {str(s): int(n) for s, n in await conn.execute(
            sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status))}


@contextlib.asynccontextmanager
async def served(settings: ApiSettings) -> AsyncIterator[Api]:
    """The API over real HTTP for the block (`serve_api` as a context manager)."""
    async with contextlib.aclosing(serve_api(settings)) as stream:
        async for api in stream:
            yield api
            return


# --- A worker at the protocol level: the real queue and signed callbacks, no model --------------------


class FakeWorker:
    """Claims with the real queue and reports with signed callbacks through the real API, like a worker
    whose GPU work takes no time. For tests about the API's state machine, not about generation."""

    def __init__(self, api: Api, worker_id: str | None = None, queues: tuple[str, ...] = ("sdxl_queue",)) -> None:
        self.api = api
        self.worker_id = worker_id or f"fake-{uuid.uuid4().hex[:8]}"
        self.queues = list(queues)

    async def heartbeat(self, ttl: float = 600.0) -> None:
        await self.api.state.queue.heartbeat(self.worker_id, self.queues, ttl)

    async def die(self) -> None:
        """The heartbeat lapses at once, as when the process is killed."""
        await self.api.state.queue.heartbeat(self.worker_id, self.queues, 0.001)
        await asyncio.sleep(0.01)

    async def take(self, timeout: float = 0.05) -> tuple[str, dict[str, Any]] | None:
        """The next message (moved into this worker's processing list), or None."""
        payload = await self.api.state.queue.claim(self.queues, self.worker_id, timeout)
        return None if payload is None else (payload, json.loads(payload))

    async def ack(self, payload: str) -> None:
        await self.api.state.queue.ack(self.worker_id, payload)

    async def report(self, job_id: str, status: str, attempt: int | None = None, msg_id: str | None = None,
                     **fields: Any) -> httpx.Response:
        body: dict[str, Any] = {"job_id": job_id, "status": status, "worker_id": self.worker_id, **fields}
        if attempt is not None:
            body["attempt"] = attempt
        return await self.api.callback(body, msg_id=msg_id)

    async def claim(self, job_id: str) -> int | None:
        """The `processing` callback that claims the job in the store; its attempt number, or None if refused."""
        answer = await self.report(job_id, "processing", progress=0)
        return int(answer.json()["attempt"]) if answer.status_code == 200 else None

    @staticmethod
    def assets(message: dict[str, Any], count: int) -> list[dict[str, Any]]:
        ext = message["config"]["file_extension"]
        return [{"url": f"{message['user_id']}/{message['id']}_{n}.{ext}", "type": "image",
                 "metadata": {"size_bytes": 1}} for n in range(count)]
