"""A pure ASGI middleware that refuses bodies over the limit with 413, whether or not they declare a length."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_api.errors import ApiError, error_response


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """A declared length over the limit is refused before the app runs. An undeclared (chunked) body
    is counted as it arrives; once over, the app's reading fails, and whatever the app then answers
    (FastAPI makes a failed body read a 400, and a task group wraps the error in a group) is replaced
    by the 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body it could not read; the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(413, "Request body too large", f"the limit is {self.max_bytes} bytes",
                         suggested_action="Send a smaller body.")
        await error_response(error)(scope, receive, send)
