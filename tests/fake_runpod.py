"""A fake of the RunPod serverless platform, both sides, served over real HTTP on loopback.

The API's side is RunPod's REST API as documented (`POST /v2/{endpoint}/run`, `GET /status/{id}`,
`POST /cancel/{id}`, `GET /health`, with `Authorization: Bearer <key>`): each request is checked and
recorded, and refusals (429 with `Retry-After`, 5xx) can be queued. The worker's side is what
runpod-python's production job loop reads from its environment (`RUNPOD_WEBHOOK_GET_JOB` job-take,
its derived job-stop long-poll, `RUNPOD_WEBHOOK_POST_OUTPUT` job-done, `RUNPOD_WEBHOOK_PING`), so the real
SDK takes the jobs the API posted, runs our handler and returns results here. A cancel or an execution
timeout reaches the worker as RunPod's does: through the stop channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from harness import serve_asgi
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "rp_test_key_0123456789"
ENDPOINT = "ep-test"
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@dataclass
class FakeJob:
    id: str
    input: dict[str, Any]
    policy: dict[str, Any]
    status: str = "IN_QUEUE"
    output: Any = None
    error: Any = None
    worker: str | None = None
    started: float | None = None
    progress: list[Any] = field(default_factory=list)


@dataclass
class FakeRunPod:
    url: str = ""
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (method, path, body)
    refusals: list[int] = field(default_factory=list)  # answers for the next REST calls: 429, 503, ...
    problems: list[str] = field(default_factory=list)  # requests that broke the documented form
    stops: set[str] = field(default_factory=set)
    pings: int = 0
    forgotten: set[str] = field(default_factory=set)
    retried: int = 0
    # A worker silent (no job-take, job-stop, job-done or ping) for this long is dead: RunPod puts its jobs
    # in progress back in the queue, as it retries the requests of a worker that failed.
    worker_silence: float = 5.0
    _heard: dict[str, float] = field(default_factory=dict)

    def env(self, worker_id: str = "pod-1") -> dict[str, str]:
        """What RunPod sets in a serverless worker's environment, pointed at this fake."""
        base = f"{self.url}/v2/{ENDPOINT}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=cpu",
            "RUNPOD_POD_ID": worker_id, "RUNPOD_AI_API_KEY": "worker-side-key", "RUNPOD_ENDPOINT_ID": ENDPOINT,
            "RUNPOD_PING_INTERVAL": "1000", "RUNPOD_SKIP_GPU_CHECK": "true",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_LOG_LEVEL": "INFO",
        }

    def stop(self, job_id: str, status: str = "CANCELLED") -> None:
        """Stop a job as a RunPod cancel or execution timeout does."""
        job = self.jobs[job_id]
        if job.status not in ENDED:
            if job.status == "IN_PROGRESS":
                self.stops.add(job_id)
            job.status = status

    def forget(self, job_id: str) -> None:
        """RunPod keeps results for a while only: afterwards `/status` answers 404."""
        self.forgotten.add(job_id)

    # --- the REST API ------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {API_KEY}"

    async def _rest(self, request: Request, path: str) -> Response | None:
        """Checks every REST call; an answer here (401, 404, a queued refusal) ends it."""
        body: dict[str, Any] = {}
        if request.method == "POST":
            raw = await request.body()
            body = json.loads(raw) if raw else {}
        self.requests.append((request.method, path, body))
        if not self._authorized(request):
            return JSONResponse({"error": "Unauthorized"}, 401)
        if request.path_params["endpoint"] != ENDPOINT:
            return JSONResponse({"error": "endpoint not found"}, 404)
        if self.refusals:
            code = self.refusals.pop(0)
            return JSONResponse({"error": "rate limited"}, code, headers={"Retry-After": "0.2"})
        return None

    async def run(self, request: Request) -> Response:
        refused = await self._rest(request, "/run")
        if refused is not None:
            return refused
        body = self.requests[-1][2]
        policy = body.get("policy", {})
        if not isinstance(body.get("input"), dict):
            self.problems.append(f"/run without an input object: {body!r:.200}")
            return JSONResponse({"error": "input must be an object"}, 400)
        for key, least in (("executionTimeout", 5_000), ("ttl", 10_000)):
            value = policy.get(key)
            if not isinstance(value, int) or value < least:
                self.problems.append(f"/run policy.{key} = {value!r}: milliseconds, at least {least}")
        job = FakeJob(f"rp-{uuid.uuid4().hex[:12]}", body["input"], policy)
        self.jobs[job.id] = job
        return JSONResponse({"id": job.id, "status": job.status})

    async def status(self, request: Request) -> Response:
        refused = await self._rest(request, "/status")
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None or job.id in self.forgotten:
            return JSONResponse({"error": "request does not exist"}, 404)
        self._time_out(job)
        answer: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.output is not None:
            answer["output"] = job.output
        if job.error is not None:
            answer["error"] = job.error
        return JSONResponse(answer)

    async def cancel(self, request: Request) -> Response:
        refused = await self._rest(request, "/cancel")
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return JSONResponse({"error": "request does not exist"}, 404)
        self.stop(job.id)
        return JSONResponse({"id": job.id, "status": job.status})

    async def health(self, request: Request) -> Response:
        refused = await self._rest(request, "/health")
        if refused is not None:
            return refused
        counts = {s: sum(1 for j in self.jobs.values() if j.status == s) for s in ("IN_QUEUE", "IN_PROGRESS")}
        return JSONResponse({"jobs": {"inQueue": counts["IN_QUEUE"], "inProgress": counts["IN_PROGRESS"],
                                      "completed": sum(j.status == "COMPLETED" for j in self.jobs.values()),
                                      "failed": sum(j.status == "FAILED" for j in self.jobs.values()),
                                      "retried": 0},
                             "workers": {"idle": 0, "running": counts["IN_PROGRESS"]}})

    def _time_out(self, job: FakeJob) -> None:
        limit = job.policy.get("executionTimeout")
        if job.status == "IN_PROGRESS" and job.started and isinstance(limit, int) \
                and time.monotonic() - job.started > limit / 1000:
            self.stop(job.id, "TIMED_OUT")

    # --- the worker's side ---------------------------------------------------------------------------

    def _hear(self, worker: str) -> None:
        now = time.monotonic()
        self._heard[worker] = now
        for job in self.jobs.values():
            heard = self._heard.get(job.worker or "", now)
            if job.status == "IN_PROGRESS" and now - heard > self.worker_silence:
                job.status, job.worker, job.started = "IN_QUEUE", None, None
                self.retried += 1

    async def job_take(self, request: Request) -> Response:
        self._hear(request.path_params["worker"])
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for job in self.jobs.values():
                if job.status == "IN_QUEUE":
                    job.status, job.worker, job.started = "IN_PROGRESS", request.path_params["worker"], time.monotonic()
                    return JSONResponse({"id": job.id, "input": job.input})
            await asyncio.sleep(0.05)
        return Response(status_code=204)

    async def job_stop(self, request: Request) -> Response:
        self._hear(request.path_params["worker"])
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for job in self.jobs.values():
                self._time_out(job)
            if self.stops:
                stops, self.stops = sorted(self.stops), set()
                return JSONResponse({"jobsToStop": stops})
            await asyncio.sleep(0.05)
        return Response(status_code=204)

    async def job_done(self, request: Request) -> Response:
        self._hear(request.path_params["worker"])
        job = self.jobs.get(request.path_params["job"])
        result = json.loads(await request.body())
        if job is None:
            return JSONResponse({"error": "unknown job"}, 404)
        if result.get("status") == "IN_PROGRESS":
            job.progress.append(result.get("output"))
        elif job.status == "IN_PROGRESS":  # a stopped job's late result changes nothing
            job.status = "FAILED" if result.get("error") else "COMPLETED"
            job.output, job.error = result.get("output"), result.get("error")
        return JSONResponse({})

    async def ping(self, request: Request) -> Response:
        self._hear(request.path_params["worker"])
        self.pings += 1
        return JSONResponse({})

    def app(self) -> Starlette:
        prefix = "/v2/{endpoint}"
        return Starlette(routes=[
            Route(f"{prefix}/run", self.run, methods=["POST"]),
            Route(f"{prefix}/status/{{job}}", self.status, methods=["GET"]),
            Route(f"{prefix}/cancel/{{job}}", self.cancel, methods=["POST"]),
            Route(f"{prefix}/health", self.health, methods=["GET"]),
            Route(f"{prefix}/job-take/{{worker}}", self.job_take, methods=["GET"]),
            Route(f"{prefix}/job-stop/{{worker}}", self.job_stop, methods=["GET"]),
            Route(f"{prefix}/job-done/{{worker}}/{{job}}", self.job_done, methods=["POST"]),
            Route(f"{prefix}/ping/{{worker}}", self.ping, methods=["GET"]),
        ])


@contextlib.asynccontextmanager
async def running_runpod() -> AsyncIterator[FakeRunPod]:
    fake = FakeRunPod()
    async with serve_asgi(fake.app()) as url:
        fake.url = url
        yield fake
