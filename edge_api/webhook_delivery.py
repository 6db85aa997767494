"""Delivering the app's webhook events from the outbox: signed, retried, in order, never followed elsewhere.

Every API process runs a `WebhookSender`; claims in the outbox (edge_api/webhook_outbox.py) keep two
of them from sending the same try. A delivery is signed with Standard Webhooks using the app's
secret and keeps its `webhook-id` on every retry, so a receiver that deduplicates by it sees each
event once. Outcomes:

- a 2xx ends the delivery; a 410 ends it and every later delivery to that URL;
- anything else (a redirect, which is never followed and is recorded with its `Location`, another
  status, a timeout, a refused address) is retried with exponential backoff and jitter until the
  event is `webhook_retry_window_seconds` old (24 h by default), then the delivery is `failed`.

The sender connects to the address that the SSRF check approved (edge_api/webhook_targets.py), reads
at most `webhook_max_response_bytes` of the answer and gives up on a try after `webhook_timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api import webhook_outbox, webhook_targets
from edge_api.metrics import Metrics
from edge_api.settings import ApiSettings
from edge_api.webhook_outbox import Attempt, Claimed, Row
from jobs.db import as_utc, utcnow
from jobs.webhooks import signed_headers

log = logging.getLogger(__name__)

USER_AGENT = "ourvidz-webhooks/0.1"


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    secret: str
    allow_private: bool
    require_https: bool
    timeout: float = 10.0
    max_response_bytes: int = 64 * 1024
    retry_base: float = 5.0
    retry_max_interval: float = 3600.0
    retry_window: float = 86400.0

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> DeliveryPolicy:
        return cls(secret=settings.webhook_secret, allow_private=settings.webhooks_may_reach_private_addresses,
                   require_https=settings.environment == "production", timeout=settings.webhook_timeout_seconds,
                   max_response_bytes=settings.webhook_max_response_bytes,
                   retry_base=settings.webhook_retry_base_seconds,
                   retry_max_interval=settings.webhook_retry_max_interval_seconds,
                   retry_window=settings.webhook_retry_window_seconds)

    def next_try(self, tries: int, created_at: datetime, now: datetime) -> datetime | None:
        """When to try again after `tries` failed tries (full jitter over the upper half); None: give up."""
        delay = min(self.retry_base * 2 ** (tries - 1), self.retry_max_interval) * random.uniform(0.5, 1.0)
        moment = now + timedelta(seconds=delay)
        return moment if moment - created_at <= timedelta(seconds=self.retry_window) else None


class WebhookSender:
    def __init__(self, engine: AsyncEngine, policy: DeliveryPolicy, render: Callable[[Row], Awaitable[bytes]],
                 metrics: Metrics, *, poll_seconds: float = 1.0, concurrency: int = 16) -> None:
        self._engine = engine
        self._policy = policy
        self._render = render
        self._metrics = metrics
        self._poll = poll_seconds
        self._concurrency = concurrency
        self._in_flight: set[asyncio.Task[None]] = set()
        # Redirects are answers to record, not to follow; proxies from the environment are not ours to use.
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                       timeout=httpx.Timeout(policy.timeout))

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.deliver_due()
                except Exception:  # a database outage: the events wait in the outbox
                    log.exception("webhook pass failed")
                await asyncio.sleep(self._poll)
        finally:
            for task in list(self._in_flight):
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self._http.aclose()

    async def deliver_due(self) -> int:
        """Claim what is due (up to the free concurrency) and start sending it; returns how many."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        lease = 2 * self._policy.timeout + 5.0  # a try ends within the timeout; the rest is margin
        claimed = await webhook_outbox.claim_due(self._engine, lease, free)
        for item in claimed:
            task = asyncio.create_task(self._deliver(item), name=f"webhook {item.delivery['message_id']}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(claimed)

    async def _deliver(self, claimed: Claimed) -> None:
        delivery = claimed.delivery
        if await webhook_outbox.is_gone(self._engine, delivery["url"]):
            await webhook_outbox.finish(self._engine, claimed, None, "gone")
            self._metrics.webhook_deliveries.labels("gone").inc()
            return
        started, clock = utcnow(), time.monotonic()
        try:
            attempt = await self._send(claimed, started)
        except Exception as exc:  # whatever went wrong is this try's outcome, retried like a 5xx
            attempt = Attempt(started, 0, error=f"{type(exc).__name__}: {exc}"[:500])
        await self._settle(claimed, replace(attempt, duration_ms=int((time.monotonic() - clock) * 1000)))

    async def _send(self, claimed: Claimed, started: datetime) -> Attempt:
        delivery = claimed.delivery
        policy = self._policy
        try:
            url = webhook_targets.parse(delivery["url"], require_https=policy.require_https)
            target = await webhook_targets.resolve(url, allow_private=policy.allow_private)
        except webhook_targets.RefusedTarget as exc:
            return Attempt(started, 0, error=f"refused: {exc}")
        job = webhook_outbox.as_of_event(claimed.job, delivery["snapshot"])
        body = await self._render(job)
        headers = {**signed_headers(policy.secret, body, delivery["message_id"]), "user-agent": USER_AGENT,
                   "ourvidz-event": delivery["event"], "host": url.netloc.decode()}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        async with asyncio.timeout(policy.timeout):
            response = await self._connect(target, body, headers, extensions)
            try:
                await _read_at_most(response, policy.max_response_bytes)
            finally:
                await response.aclose()
        location = response.headers.get("location") if response.is_redirect else None
        return Attempt(started, 0, status_code=response.status_code, location=location)

    async def _connect(self, target: webhook_targets.Target, body: bytes, headers: dict[str, str],
                       extensions: dict[str, str]) -> httpx.Response:
        """Send to the first checked address that accepts a connection (a name may have several)."""
        async def post(address: str) -> httpx.Response:
            request = self._http.build_request("POST", target.pinned(address), content=body, headers=headers,
                                               extensions=extensions)
            return await self._http.send(request, stream=True)

        for address in target.addresses[:-1]:
            with contextlib.suppress(httpx.ConnectError):
                return await post(address)
        return await post(target.addresses[-1])

    async def _settle(self, claimed: Claimed, attempt: Attempt) -> None:
        code = attempt.status_code
        if code is not None and 200 <= code < 300:
            outcome, state, retry_at = "delivered", "delivered", None
        elif code == 410:
            outcome, state, retry_at = "gone", "gone", None
        else:
            created = as_utc(claimed.delivery["created_at"])
            assert created is not None
            retry_at = self._policy.next_try(claimed.attempt, created, utcnow())
            outcome, state = ("retry", "pending") if retry_at is not None else ("gave_up", "failed")
        if not await webhook_outbox.finish(self._engine, claimed, attempt, state, retry_at):
            log.warning("webhook %s: the claim lapsed before its result was recorded",
                        claimed.delivery["message_id"])
            return
        self._metrics.webhook_deliveries.labels(outcome).inc()
        if state == "delivered":
            created = as_utc(claimed.delivery["created_at"])
            assert created is not None
            self._metrics.webhook_delay.observe((utcnow() - created).total_seconds())
        if state != "delivered":
            log.info("webhook %s (%s) to %s: %s, now %s", claimed.delivery["message_id"], claimed.delivery["event"],
                     claimed.delivery["url"], code or attempt.error, state)


async def _read_at_most(response: httpx.Response, limit: int) -> None:
    """Read the answer up to `limit` bytes: a receiver cannot make the sender hold a large body."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen >= limit:
            return
