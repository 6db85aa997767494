"""FastAPI dependencies, so route signatures read like prose: `user: CurrentUser, state: State`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from edge_api.auth import User
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


async def get_user(state: State, authorization: Authorization) -> User:
    return await state.auth.authenticate(authorization)


CurrentUser = Annotated[User, Depends(get_user)]
