"""FastAPI dependencies, so route signatures read like prose: `user: CurrentUser, state: State`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.security import HTTPBearer

from edge_api.auth import User
from edge_api.errors import ApiError
from edge_api.rate_limits import Policy
from edge_api.state import AppState


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in a thread, a hop per request for nothing.
    state: AppState = request.app.state.ourvidz
    return state


State = Annotated[AppState, Depends(get_state)]


class BearerHeader(HTTPBearer):
    """The raw `Authorization` header, documented in the schema as a bearer scheme on every user route.

    Raw, so that every refusal (missing, not `Bearer`, a bad token) is the Authenticator's 401 in the
    envelope. And cheaper than a `Header()` parameter, whose annotation FastAPI inspects again on every
    request (≈ 15 % of a submit's CPU in FastAPI, by cProfile).
    """

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        return request.headers.get("authorization")


bearer = BearerHeader(auto_error=False, scheme_name="SupabaseJWT",
                      description="The signed-in user's Supabase JWT: `Authorization: Bearer <access_token>`.")
Authorization = Annotated[str | None, Security(bearer)]


async def enforce(state: AppState, response: Response, policy: Policy, subject: str) -> None:
    """Count the request against the subject's limit; a 429 with `Retry-After` over it."""
    decision = await state.limiter.check(policy, subject)
    if decision is None:
        return
    if not decision.allowed:
        state.metrics.refusals.labels("rate_limit").inc()
        raise ApiError(429, "Too many requests", f"the limit is {policy.quota} requests per {policy.window} s "
                       f"({policy.name})", retryable=True, suggested_action=f"Retry in {decision.reset} seconds.",
                       headers={"Retry-After": str(decision.reset), **decision.headers})
    response.headers.update(decision.headers)


async def get_user(request: Request, response: Response, state: State, authorization: Authorization) -> User:
    user = await state.auth.authenticate(authorization)
    submit = request.method == "POST" and request.url.path.endswith("/queue-job")
    limits = state.settings.rate_limits
    await enforce(state, response, limits.submits if submit else limits.requests, f"user:{user.id}")
    return user


CurrentUser = Annotated[User, Depends(get_user)]


async def limit_by_address(request: Request, response: Response, state: State) -> None:
    """The routes that need no user are limited per client address."""
    address = request.client.host if request.client else "unknown"
    await enforce(state, response, state.settings.rate_limits.anonymous, f"address:{address}")


ByAddress = Depends(limit_by_address)
