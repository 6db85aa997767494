"""The web page at `/` (plain HTML, CSS and an ES module, no build step) and the two reads it needs beyond the
reference's routes: the catalog of job types and the signed-in user's balance."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel

from edge_api.deps import ByAddress, CurrentUser, State
from edge_api.errors import not_found
from edge_api.settings import ApiSettings
from jobs.catalog import Catalog, JobSpec
from jobs.messages import ErrorEnvelope

router = APIRouter()

# Only these files are served, whatever else the package folder holds (its `__init__.py`, caches).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class JobTypeInfo(BaseModel):
    """One job type as a client shows it: what it makes, what it costs, how long it takes."""

    job_type: str
    description: str
    family: Literal["sdxl", "wan"]
    quality: Literal["fast", "high"]
    output: Literal["image", "video"]
    count: int
    width: int
    height: int
    frames: int
    fps: int
    duration_seconds: float | None
    content_type: str
    price: int
    expected_seconds: float
    negative_prompt_supported: bool
    enhanced: bool
    queue: str


class CatalogResponse(BaseModel):
    success: Literal[True] = True
    job_types: list[JobTypeInfo]


class MeResponse(BaseModel):
    success: Literal[True] = True
    user_id: str
    email: str | None
    balance: int


def job_type_info(spec: JobSpec, catalog: Catalog) -> JobTypeInfo:
    video = spec.output.value == "video"
    return JobTypeInfo(
        job_type=spec.job_type, description=spec.description, family=spec.family.value,
        quality=spec.quality.value, output=spec.output.value, count=spec.num_outputs, width=spec.width,
        height=spec.height, frames=spec.frames, fps=spec.fps,
        duration_seconds=round(spec.frames / spec.fps, 2) if video and spec.fps else None,
        content_type=spec.content_type, price=spec.price, expected_seconds=catalog.expected_seconds(spec.job_type),
        negative_prompt_supported=spec.negative_prompt_supported, enhanced=spec.enhanced, queue=spec.queue,
    )


@router.get("/api/catalog", response_model=CatalogResponse, tags=["catalog"], dependencies=[ByAddress])
async def catalog(state: State) -> CatalogResponse:
    """The job types this deployment runs, with price (credits) and the expected time (jobs.catalog)."""
    return CatalogResponse(job_types=[job_type_info(spec, state.catalog) for spec in state.catalog.values()])


@router.get("/api/me", response_model=MeResponse, tags=["account"], responses={401: {"model": ErrorEnvelope}})
async def me(user: CurrentUser, state: State) -> MeResponse:
    """The signed-in user and their credit balance."""
    balance = await state.store.balance(user.id, state.settings.starting_credits)
    return MeResponse(user_id=str(user.id), email=user.email, balance=balance)


def content_security_policy(settings: ApiSettings) -> str:
    """Everything from this origin only; images and videos also from where signed asset URLs point."""
    media = ["'self'"]
    for base in (settings.public_base_url, settings.supabase_url if settings.storage == "supabase" else None):
        if base:
            parts = urlsplit(base)
            if parts.scheme and parts.netloc:
                media.append(f"{parts.scheme}://{parts.netloc}")
    sources = " ".join(dict.fromkeys(media))
    return "; ".join([
        "default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
        f"img-src {sources}", f"media-src {sources}", "object-src 'none'", "base-uri 'none'",
        "form-action 'self'", "frame-ancestors 'none'",
    ])


def _static_file(name: str) -> bytes | None:
    if "/" in name or "\\" in name or name.startswith(".") or _suffix(name) not in CONTENT_TYPES:
        return None
    target = resources.files("edge_api.static").joinpath(name)
    return target.read_bytes() if target.is_file() else None


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _serve(name: str, state: State, if_none_match: str | None) -> Response:
    body = _static_file(name)
    if body is None:
        raise not_found("File")
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "ETag": etag,
        # Revalidated on every load (cheap with the ETag), so a deploy shows at once without file hashes.
        "Cache-Control": "no-cache",
        "Content-Security-Policy": content_security_policy(state.settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=CONTENT_TYPES[_suffix(name)], headers=headers)


# Plain `def`: the file read runs in the thread pool, not on the event loop.
@router.get("/", include_in_schema=False)
def index(state: State, if_none_match: str | None = Header(default=None)) -> Response:
    return _serve("index.html", state, if_none_match)


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str, state: State, if_none_match: str | None = Header(default=None)) -> Response:
    return _serve(name, state, if_none_match)
