"""Posting signed callbacks to the API: terminal ones retried with backoff until answered, progress best-effort.

A retried callback keeps its `webhook-id`, so the API applies it once however many times it arrives.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from jobs.messages import JobCallback
from jobs.webhooks import signed_headers

log = logging.getLogger(__name__)

# The API's answers that mean "try again later"; any other answer is final.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class CallbackNotDelivered(Exception):
    """The API could not be reached, or asked to retry; raised for tenacity to try again."""


@dataclass(frozen=True, slots=True)
class CallbackAnswer:
    status_code: int
    body: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.status_code < 300

    @property
    def attempt(self) -> int | None:
        value = self.body.get("attempt")
        return value if isinstance(value, int) else None


class CallbackClient:
    def __init__(self, url: str, secret: str, client: httpx.AsyncClient, *, deadline: float = 3600.0,
                 base_delay: float = 0.5) -> None:
        self._url = url
        self._secret = secret
        self._client = client
        self._deadline = deadline
        self._base_delay = base_delay

    async def deliver(self, callback: JobCallback) -> CallbackAnswer:
        """Post until the API answers with anything but a retryable status, or the deadline passes."""
        msg_id = f"msg_{uuid.uuid4().hex}"
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(CallbackNotDelivered), stop=stop_after_delay(self._deadline),
            wait=wait_exponential_jitter(initial=self._base_delay, max=30.0), reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post(callback, msg_id, timeout=30.0)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def try_once(self, callback: JobCallback, timeout: float = 5.0) -> CallbackAnswer | None:
        """A progress report: one try; a lost one is replaced by the next."""
        try:
            return await self._post(callback, f"msg_{uuid.uuid4().hex}", timeout=timeout)
        except CallbackNotDelivered as exc:
            log.debug("job %s: progress callback not delivered: %s", callback.job_id, exc)
            return None

    async def _post(self, callback: JobCallback, msg_id: str, timeout: float) -> CallbackAnswer:
        body = callback.model_dump_json(exclude_none=True).encode()
        headers = signed_headers(self._secret, body, msg_id)
        try:
            response = await self._client.post(self._url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            log.info("job %s: callback %s not delivered: %s", callback.job_id, callback.status, exc)
            raise CallbackNotDelivered(str(exc)) from exc
        if response.status_code in RETRYABLE_STATUS:
            raise CallbackNotDelivered(f"HTTP {response.status_code}")
        try:
            body_json = response.json()
        except ValueError:
            body_json = {}
        return CallbackAnswer(response.status_code, body_json if isinstance(body_json, dict) else {})
