"""A job's status as Server-Sent Events: one `job` event per change, until the job ends or the client leaves.

The store is the source of truth, so the stream polls it (one indexed read every `POLL_SECONDS`) rather
than listening to callbacks: it sees every change whichever API replica or sweeper made it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from edge_api.auth import User
from edge_api.deps import Authorization, State, get_user
from edge_api.errors import not_found
from edge_api.state import AppState
from edge_api.views import job_view
from jobs.messages import ErrorEnvelope, JobView
from jobs.status import JobStatus

router = APIRouter()

POLL_SECONDS = 0.3
KEEPALIVE_SECONDS = 15.0
# Proxies may keep a connection whose client left; a stream this old ends anyway (clients reconnect or poll).
MAX_STREAM_SECONDS = 3600.0


async def get_stream_user(request: Request, response: Response, state: State, authorization: Authorization,
                          access_token: Annotated[str | None, Query(max_length=8192)] = None) -> User:
    # The browser's EventSource cannot send an Authorization header, so this route alone also takes the
    # token as `?access_token=` (RFC 6750 §2.3). A URL can end up in access logs: clients should prefer
    # the header where they can, and tokens are short-lived.
    if authorization is None and access_token:
        authorization = f"Bearer {access_token}"
    return await get_user(request, response, state, authorization)


StreamUser = Annotated[User, Depends(get_stream_user)]

_SCHEMA: dict[int | str, dict[str, Any]] = {
    200: {"description": "`event: job` with the job view as `data` on each change; `: keepalive` comments.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    # Refusals: a bad job id or `access_token` (400, 413 if too long), auth (401), not the caller's job (404).
    **{code: {"model": ErrorEnvelope} for code in (400, 401, 404, 413, 422)},
}


@router.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse, responses=_SCHEMA)
async def job_events(job_id: str, request: Request, user: StreamUser, state: State) -> StreamingResponse:
    """Stream the job (the JSON of `GET /api/jobs/{id}`) whenever its status or progress changes.

    Ends after a terminal status. Authenticates with the `Authorization` header or, for EventSource,
    `?access_token=`."""
    try:
        key = uuid.UUID(job_id)
    except ValueError as exc:
        raise not_found("Job") from exc
    if await state.store.get_job(key, user.id) is None:
        raise not_found("Job")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: do not buffer the stream
    return StreamingResponse(_stream(request, state, key, user.id), media_type="text/event-stream",
                             headers=headers)


def sse_event(event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


async def _stream(request: Request, state: AppState, job_id: uuid.UUID, user_id: uuid.UUID) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    seen: tuple[Any, ...] | None = None
    # The browser waits this long before it reconnects a dropped stream.
    yield b"retry: 2000\n\n"
    while loop.time() - started < MAX_STREAM_SECONDS:
        row = await state.store.get_job(job_id, user_id)
        if row is None:  # deleted meanwhile
            return
        current = (row["status"], row["progress"], row["attempts"])
        if current != seen:
            seen = current
            view: JobView = await job_view(state, row)
            yield sse_event("job", view.model_dump_json())
            last_sent = loop.time()
            if JobStatus(row["status"]).is_terminal:
                return
        elif loop.time() - last_sent >= KEEPALIVE_SECONDS:
            yield b": keepalive\n\n"
            last_sent = loop.time()
        # Under ASGI 2.4 servers a client that left is otherwise noticed only at the next write (up to 15 s).
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)
