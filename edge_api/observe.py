"""Request metrics as a pure ASGI middleware: a count and a duration per method, route template and status.

Pure ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs each request in an extra task and
costs more than the rest of this middleware on the submit path.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _record(scope, status, time.perf_counter() - started)


def _record(scope: Scope, status: int, seconds: float) -> None:
    state: Any = getattr(scope["app"].state, "ourvidz", None)
    if state is None:
        return
    template = _template(scope)
    state.metrics.requests.labels(scope["method"], template, str(status)).inc()
    state.metrics.request_seconds.labels(scope["method"], template).observe(seconds)


def _template(scope: Scope) -> str:
    """The matched route's template, with the prefix its router was included under."""
    template = getattr(scope.get("route"), "path_format", None)
    if template is None:
        return "unmatched"
    path: str = scope["path"]
    if path.startswith("/functions/v1/"):
        return "/functions/v1" + template
    if path.startswith("/api/") and not template.startswith("/api/"):
        return "/api" + template
    return str(template)
