"""A client of RunPod's serverless REST API (`https://api.runpod.ai/v2/{endpoint_id}/…`), the API's side only.

`run` posts a job, `status` reads one, `cancel` stops one, `health` reads the endpoint's counts. A 429
(RunPod's per-endpoint rate limits) and a 5xx are retried with exponential backoff and jitter, honouring
`Retry-After`; a network error too. What still fails is `RunPodUnavailable`; a refusal (a bad key, an
unknown endpoint) is `RunPodRefused`. The API key lives in the API's settings only: workers never see it.

    RunPodError
     ├── RunPodUnavailable   unreachable, 5xx or 429 after the retries: try again later
     └── RunPodRefused       any other 4xx: a configuration to fix
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

# RunPod's job states (`GET /status/{id}`). A job in one of ENDED will never run again.
IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
ENDED = frozenset({COMPLETED, "FAILED", "CANCELLED", "TIMED_OUT"})


class RunPodError(Exception):
    pass


class RunPodUnavailable(RunPodError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunPodRefused(RunPodError):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class RunPodJob:
    id: str
    status: str  # IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT; GONE when RunPod forgot it
    output: Any = None
    error: Any = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED or self.status == GONE


GONE = "GONE"  # RunPod keeps a finished job's result for a while only; after that `/status` answers 404


class _WaitRetryAfter(wait_base):
    """Exponential backoff with jitter, or the server's `Retry-After` when it gave one (longer wins)."""

    def __init__(self) -> None:
        self._backoff = wait_exponential_jitter(initial=0.5, max=10.0)

    def __call__(self, retry_state: Any) -> float:
        backoff = float(self._backoff(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RunPodUnavailable) and exc.retry_after is not None:
            return max(backoff, min(exc.retry_after, 30.0))
        return backoff


class RunPodClient:
    def __init__(self, api_key: str, http: httpx.AsyncClient, base_url: str = "https://api.runpod.ai/v2",
                 attempts: int = 4, timeout: float = 10.0) -> None:
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._http = http
        self._base = base_url.rstrip("/")
        self._attempts = attempts
        self._timeout = timeout

    async def run(self, endpoint_id: str, job_input: dict[str, Any], *, execution_timeout_ms: int,
                  ttl_ms: int) -> str:
        """Queue a job on the endpoint; returns RunPod's job id."""
        body = {"input": job_input, "policy": {"executionTimeout": execution_timeout_ms, "ttl": ttl_ms}}
        answer = await self._call("POST", f"/{endpoint_id}/run", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise RunPodUnavailable(f"RunPod's /run answered without a job id: {answer!r:.200}")
        return answer["id"]

    async def status(self, endpoint_id: str, job_id: str) -> RunPodJob:
        try:
            answer = await self._call("GET", f"/{endpoint_id}/status/{job_id}")
        except RunPodRefused as exc:
            if exc.status_code == 404:
                return RunPodJob(job_id, GONE)
            raise
        return RunPodJob(job_id, str(answer.get("status", GONE)), answer.get("output"), answer.get("error"))

    async def cancel(self, endpoint_id: str, job_id: str) -> None:
        try:
            await self._call("POST", f"/{endpoint_id}/cancel/{job_id}")
        except RunPodRefused as exc:
            if exc.status_code != 404:  # a job RunPod forgot is as good as canceled
                raise

    async def health(self, endpoint_id: str) -> dict[str, Any]:
        answer = await self._call("GET", f"/{endpoint_id}/health")
        return answer if isinstance(answer, dict) else {}

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        retrying = AsyncRetrying(retry=retry_if_exception_type(RunPodUnavailable),
                                 stop=stop_after_attempt(self._attempts), wait=_WaitRetryAfter(), reraise=True)
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, body)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _once(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        try:
            response = await self._http.request(method, self._base + path, json=body, headers=self._headers,
                                                timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise RunPodUnavailable(f"RunPod unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RunPodUnavailable(f"RunPod answered {response.status_code} to {method} {path}",
                                    _retry_after(response))
        if response.status_code >= 400:
            raise RunPodRefused(f"RunPod answered {response.status_code} to {method} {path}: {response.text[:200]}",
                                response.status_code)
        try:
            return response.json()
        except ValueError:
            return {}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
