"""FastAPI dependencies, so route signatures read like prose: `user: CurrentUser, state: State`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from edge_api.auth import User
from edge_api.state import AppState


async def get_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in a thread, a hop per request for nothing.
    state: AppState = request.app.state.ourvidz
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_user(state: State, authorization: Annotated[str | None, Header()] = None) -> User:
    return await state.auth.authenticate(authorization)


CurrentUser = Annotated[User, Depends(get_user)]
