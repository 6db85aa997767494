"""The worker process's configuration: the one place that reads its environment (prefix `OURVIDZ_`)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from jobs.catalog import QUEUES
from jobs.storage import StorageSettings

DEFAULT_API_URL = "http://127.0.0.1:8000"


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(StorageSettings):
    model_config = SettingsConfigDict(env_prefix="OURVIDZ_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = "development"
    worker_id: str = Field(default_factory=default_worker_id)
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(QUEUES))

    # The queue: Redis lists, or the store's table (embedded / Redis-free).
    redis_url: str | None = None
    database_url: str | None = None

    api_url: str = DEFAULT_API_URL
    callback_secret: str = ""

    # Models: real weights in `checkpoints_dir/{sdxl,wan,qwen}`, or random ones built there on first run.
    checkpoints_dir: Path = Path("./.ourvidz/checkpoints")
    build_checkpoints: Literal["never", "tiny", "full"] = "never"
    sdxl_checkpoint: Path | None = Field(default=None, description="A single .safetensors SDXL file (LUSTIFY).")
    device: str = "auto"
    work_dir: Path = Path("./.ourvidz/work")

    heartbeat_ttl_seconds: float = Field(default=15.0, gt=0)
    progress_interval_seconds: float = Field(default=2.0, ge=0)
    keepalive_seconds: float = Field(default=20.0, gt=0)
    claim_timeout_seconds: float = Field(default=1.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # How long a stopped generation may take to reach its next step before the model process is killed.
    stop_timeout_seconds: float = Field(default=30.0, gt=0)
    upload_attempts: int = Field(default=6, ge=1)
    callback_deadline_seconds: float = Field(default=3600.0, gt=0)
    # A serverless request must not sit for an hour on an API that is away: RunPod bills it and keeps it
    # from other jobs. Past this, the request answers RunPod with the error; the API's lease takes over.
    serverless_callback_deadline_seconds: float = Field(default=60.0, gt=0)
    retry_base_seconds: float = Field(default=0.5, gt=0)

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_names(cls, value: Any) -> Any:
        # `--queues sdxl,wan` and `OURVIDZ_QUEUES=sdxl_queue` both name the reference's lists.
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            names = [v.strip() if str(v).endswith("_queue") else f"{str(v).strip()}_queue" for v in value]
            unknown = [n for n in names if n not in QUEUES]
            if unknown:
                raise ValueError(f"unknown queues {unknown}; choose from {list(QUEUES)}")
            return names
        return value

    @model_validator(mode="after")
    def _production_needs_real_endpoints(self) -> WorkerSettings:
        # A worker on RunPod with the defaults would write its files into its own disk and call back to
        # itself: every job would run, then be lost. Refused at start instead.
        if self.environment == "production":
            if self.storage == "local":
                raise ValueError("OURVIDZ_STORAGE=local in production: a worker's files must go to a shared "
                                 "bucket (OURVIDZ_STORAGE=supabase)")
            if self.api_url == DEFAULT_API_URL:
                raise ValueError("OURVIDZ_API_URL is not set: the worker must call back to the API's public URL")
            if not self.callback_secret:
                raise ValueError("OURVIDZ_CALLBACK_SECRET must be set in production")
        return self

    @property
    def callback_url(self) -> str:
        return f"{self.api_url.rstrip('/')}/api/job-callback"
