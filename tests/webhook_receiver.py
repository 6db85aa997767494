"""An app's webhook receiver on loopback, verifying every delivery with the `standardwebhooks` library.

It answers each path as told (`answer(path, code)`: a status, `301` with a `Location`, or a stall
until released) and keeps what it accepted, in arrival order, deduplicated the way a receiver should
be: by `webhook-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from harness import Api, serve_asgi
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from jobs.webhooks import new_secret


@dataclass
class Delivery:
    path: str
    webhook_id: str
    event: str
    body: dict[str, Any]


@dataclass
class Receiver:
    secret: str = field(default_factory=new_secret)
    url: str = ""
    accepted: list[Delivery] = field(default_factory=list)  # 2xx answers, in order, duplicates included
    hits: dict[str, int] = field(default_factory=dict)  # every request by path
    hosts: list[str] = field(default_factory=list)  # the Host header of every request
    bad_signatures: int = 0
    open_requests: int = 0  # being answered now
    answers: dict[str, int] = field(default_factory=dict)  # path → status to answer (default 200)
    stalled: dict[str, asyncio.Event] = field(default_factory=dict)  # path → released when set
    # Decides each answer instead of `answers` (and may take its time, like a slow receiver).
    behaviour: Callable[[str], Awaitable[int]] | None = None

    def at(self, path: str) -> str:
        return f"{self.url}{path}"

    def answer(self, path: str, status: int) -> None:
        self.answers[path] = status

    def events(self, path: str | None = None) -> list[tuple[str, str]]:
        """(job id, event) of each distinct webhook-id accepted, in the order of first arrival."""
        seen: dict[str, tuple[str, str]] = {}
        for d in self.accepted:
            if path is None or d.path == path:
                seen.setdefault(d.webhook_id, (str(d.body["id"]), d.event))
        return list(seen.values())

    def duplicates(self) -> int:
        return len(self.accepted) - len({d.webhook_id for d in self.accepted})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.open_requests += 1
        try:
            await self._answer(scope, receive, send)
        finally:
            self.open_requests -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        path = request.url.path
        self.hits[path] = self.hits.get(path, 0) + 1
        self.hosts.append(request.headers.get("host", ""))
        body = await request.body()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            await Response(status_code=400)(scope, receive, send)
            return
        if path in self.stalled:
            await self.stalled[path].wait()
        status = await self.behaviour(path) if self.behaviour else self.answers.get(path, 200)
        headers = {"location": self.at("/elsewhere")} if 300 <= status < 400 else {}
        if 200 <= status < 300:
            parsed = json.loads(body)
            self.accepted.append(Delivery(path, request.headers["webhook-id"], request.headers["ourvidz-event"],
                                          parsed))
        await Response(status_code=status, headers=headers)(scope, receive, send)


@contextlib.asynccontextmanager
async def running_receiver(secret: str | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(secret=secret or new_secret())
    async with serve_asgi(receiver) as url:
        receiver.url = url
        yield receiver


async def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def settled_log(api: Api, user: Any, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The job's delivery log once no delivery is pending: a receiver answers before the sender records it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        log: dict[str, Any] = (await api.client.get(f"/api/jobs/{job_id}/webhooks", headers=api.auth(user))).json()
        if all(d["state"] != "pending" for d in log["deliveries"]) or loop.time() > deadline:
            return log
        await asyncio.sleep(0.02)
