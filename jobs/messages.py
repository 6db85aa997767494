"""The pydantic models for every boundary: the HTTP bodies, the queue message and the worker's callback.

Both sides import these classes, so the API, the worker and the queue cannot drift apart. Field names
follow the wire formats that existing ourvidz apps and workers already use (camelCase in the HTTP
request, snake_case in the queue message, both spellings in the callback).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.status import JobStatus

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
NUL = "\x00"


def contains_nul(value: Any) -> bool:
    """Whether U+0000 is in any string of a JSON value, keys included: Postgres text and JSONB cannot store it."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


def without_nul(value: Any) -> Any:
    """The JSON value with U+0000 removed from every string, keys included."""
    if isinstance(value, str):
        return value.replace(NUL, "")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


class ErrorEnvelope(BaseModel):
    """The reference's error body: every refusal of every route looks like this."""

    success: Literal[False] = False
    error: str
    details: str | None = None
    retryable: bool = False
    suggestedAction: str | None = None


# --- POST /api/queue-job ---------------------------------------------------------------------------


class QueueJobMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    credits: int | None = Field(default=None, ge=0, description="Checked against the catalog's price, not trusted.")
    bucket: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


# The job events an app's webhook can receive: every status a job can take.
WebhookEvent = Literal["queued", "processing", "completed", "failed", "canceled"]
TERMINAL_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed", "canceled")
MAX_WEBHOOK_URL_CHARS = 2048


class QueueJobRequest(BaseModel):
    """The reference's request. `jobType` is validated against the catalog by the API (400, with the list)."""

    model_config = ConfigDict(extra="ignore")

    jobType: str = Field(max_length=64)
    metadata: QueueJobMetadata = Field(default_factory=QueueJobMetadata)
    projectId: str | None = Field(default=None, max_length=64)
    videoId: str | None = Field(default=None, max_length=64)
    imageId: str | None = Field(default=None, max_length=64)
    webhook: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS,
                                description="An https URL that receives this job's events, signed (Standard "
                                            "Webhooks); the API's default URL when omitted.")
    webhookEvents: list[WebhookEvent] | None = Field(
        default=None, max_length=5, description="The events to send; the terminal ones when omitted.")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Refused here (400) rather than by Postgres when the job is stored (a 500).
        if contains_nul(value):
            raise ValueError("text must not contain NUL (U+0000) characters")
        return value


class JobSummary(BaseModel):
    id: str
    user_id: str
    job_type: str
    status: JobStatus
    created_at: datetime
    metadata: dict[str, Any]


class QueueJobResponse(BaseModel):
    success: Literal[True] = True
    job: JobSummary
    message: str
    queueLength: int
    modelVariant: str
    # Also returned by the ourvidz `queue-job` edge function that apps call today.
    jobType: str
    queue: str
    isSDXL: bool
    negativePromptSupported: bool


# --- GET /api/jobs/{id}, /api/assets, /api/queue-status -------------------------------------------


class AssetView(BaseModel):
    id: str
    job_id: str
    kind: Literal["image", "video"]
    bucket: str
    path: str
    url: str
    content_type: str
    size_bytes: int
    index: int
    metadata: dict[str, Any]
    created_at: datetime


class JobView(BaseModel):
    """A job row as its owner sees it, plus what the reference's clients poll for."""

    id: str
    user_id: str
    job_type: str
    format: str
    quality: str
    model_type: str
    status: JobStatus
    progress: int
    metadata: dict[str, Any]
    error_message: str | None
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    project_id: str | None
    image_id: str | None
    video_id: str | None
    queue_position: int | None = None
    estimated_wait_seconds: float | None = None
    assets: list[AssetView] = Field(default_factory=list)


class AssetPage(BaseModel):
    success: Literal[True] = True
    assets: list[AssetView]
    next_cursor: str | None


class QueueDepth(BaseModel):
    queue: str
    depth: int
    processing: int
    estimated_wait_seconds: float


class QueueStatus(BaseModel):
    success: Literal[True] = True
    queueDepth: int
    queues: list[QueueDepth]
    workers: int
    healthy: bool


# --- The queue message ----------------------------------------------------------------------------


class JobConfig(BaseModel):
    """The pipeline arguments. `size`, `sample_*`, `frame_num` are the names existing workers read."""

    model_config = ConfigDict(extra="allow")

    size: str
    width: int
    height: int
    sample_steps: int
    sample_guide_scale: float
    sample_shift: float
    frame_num: int
    fps: int
    num_images: int
    enhance_prompt: bool
    content_type: str
    file_extension: str
    max_file_bytes: int
    seed: int


class QueueMessage(BaseModel):
    """What a producer `LPUSH`es onto `sdxl_queue` / `wan_queue`. Unknown fields are kept, both ways."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    prompt: str
    user_id: str
    created_at: datetime
    negative_prompt: str | None = None
    video_id: str | None = None
    image_id: str | None = None
    project_id: str | None = None
    model_variant: str
    bucket: str
    config: JobConfig
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.id


# --- POST /api/job-callback -----------------------------------------------------------------------


class CallbackAsset(BaseModel):
    """One produced file: its path inside the job's bucket, and what the worker knows about it."""

    model_config = ConfigDict(extra="allow")

    url: str = Field(max_length=1024, description="The object's path in the bucket: `{user_id}/{file}`.")
    type: Literal["image", "video"] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return without_nul(value)


class JobCallback(BaseModel):
    """The worker's report. Accepts both spellings that existing ourvidz workers send."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    job_id: str = Field(validation_alias=AliasChoices("job_id", "jobId"), max_length=64)
    status: JobStatus
    assets: list[CallbackAsset] = Field(default_factory=list, max_length=64)
    error_message: str | None = Field(
        default=None, validation_alias=AliasChoices("error_message", "errorMessage"), max_length=8000
    )
    enhanced_prompt: str | None = Field(
        default=None, validation_alias=AliasChoices("enhancedPrompt", "enhanced_prompt"), max_length=16000
    )
    progress: int | None = Field(default=None, ge=0, le=100)
    attempt: int | None = Field(default=None, ge=1, description="The fencing token from the claim.")
    worker_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("error_message", "enhanced_prompt", "metadata", "worker_id", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # A worker's free text (an exception's message, a model's output) may hold U+0000, which Postgres
        # cannot store: dropped, so the report is recorded instead of failing with a 500 that the worker
        # would retry for an hour. Asset paths are not cleaned: a NUL there is refused as a path trick.
        return without_nul(value)

    @field_validator("assets", mode="before")
    @classmethod
    def _paths_or_objects(cls, value: Any) -> Any:
        # Existing workers send either bucket paths or objects; both become CallbackAsset.
        if isinstance(value, list):
            return [{"url": item} if isinstance(item, str) else item for item in value]
        return value


class CallbackAccepted(BaseModel):
    success: Literal[True] = True
    job_id: str
    status: JobStatus
    attempt: int
    duplicate: bool = False


class WebhookAttemptView(BaseModel):
    """One try of a delivery: the receiver's status code, or why there was none."""

    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    location: str | None = Field(description="The `Location` of a redirect, which is recorded, never followed.")


class WebhookDeliveryView(BaseModel):
    webhook_id: str = Field(description="The `webhook-id` header, the same on every retry of the event.")
    event: WebhookEvent
    url: str
    state: Literal["pending", "delivered", "failed", "gone"]
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    attempts: list[WebhookAttemptView]


class WebhookLog(BaseModel):
    success: Literal[True] = True
    job_id: str
    deliveries: list[WebhookDeliveryView]
