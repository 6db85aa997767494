"""Every refusal in the reference's envelope `{success: false, error, details, retryable, suggestedAction}`.

```
ApiError                 one refusal: an HTTP status, a user-facing message, details for developers
 └─ raised by routes and services; FastAPI's own errors (validation, 404 routes, bodies too large)
    are translated to the same envelope by the handlers installed in `install_handlers`.
```
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.db import StoreUnavailable, is_unreachable
from jobs.messages import ErrorEnvelope

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, details: str | None = None, *, retryable: bool = False,
                 suggested_action: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.envelope = ErrorEnvelope(error=error, details=details, retryable=retryable,
                                      suggestedAction=suggested_action)
        self.headers = headers or {}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.envelope.model_dump(), status_code=exc.status, headers=exc.headers)


def unauthorized(details: str) -> ApiError:
    return ApiError(401, "Authentication failed", details, suggested_action="Sign in again and retry.",
                    headers={"WWW-Authenticate": "Bearer"})


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found", suggested_action="Check the id.")


def unavailable(details: str, retry_after: int = 5) -> ApiError:
    return ApiError(503, "The job queue is unavailable", details, retryable=True,
                    suggested_action=f"Retry in {retry_after} seconds.", headers={"Retry-After": str(retry_after)})


def store_unavailable(details: str, retry_after: int = 5) -> ApiError:
    return ApiError(503, "The database is unavailable", details, retryable=True,
                    suggested_action=f"Retry in {retry_after} seconds (a submit with the same Idempotency-Key).",
                    headers={"Retry-After": str(retry_after)})


INTERNAL_ERROR = ApiError(500, "Internal error", "the error is logged on the server", retryable=True,
                          suggested_action="Retry later; report it if it persists.")


_STATUS_TEXT = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}


def _validation_response(exc: RequestValidationError) -> ApiError:
    errors: list[Any] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(422, "Malformed JSON body", _describe(errors), suggested_action="Send a valid JSON body.")
    if any(e.get("type") == "string_too_long" for e in errors):
        return ApiError(413, "Input too large", _describe(errors), suggested_action="Shorten the prompt.")
    return ApiError(400, "Invalid request", _describe(errors), suggested_action="Fix the fields named in details.")


def _describe(errors: list[Any]) -> str:
    parts = []
    for error in errors[:10]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(_validation_response(exc))

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _STATUS_TEXT.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, error, str(exc.detail), headers=dict(exc.headers or {})))

    async def on_store_error(_request: Request, exc: Exception) -> JSONResponse:
        # A database that is away is a 503 to retry; any other database error is a bug, a 500 below.
        if not is_unreachable(exc):
            raise exc
        log.warning("database unavailable: %s", exc)
        return error_response(store_unavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Still the envelope; Starlette logs the traceback after this answer.
        return error_response(INTERNAL_ERROR)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for store_error in (StoreUnavailable, sa.exc.DBAPIError, sa.exc.TimeoutError, ConnectionError):
        app.add_exception_handler(store_error, on_store_error)
    app.add_exception_handler(Exception, on_unexpected)
