"""The worker process's configuration: the one place that reads its environment (prefix `OURVIDZ_`)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from jobs.catalog import QUEUES
from jobs.storage import StorageSettings


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(StorageSettings):
    model_config = SettingsConfigDict(env_prefix="OURVIDZ_", env_file=None, extra="ignore")

    worker_id: str = Field(default_factory=default_worker_id)
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(QUEUES))

    # The queue: Redis lists, or the store's table (embedded / Redis-free).
    redis_url: str | None = None
    database_url: str | None = None

    api_url: str = "http://127.0.0.1:8000"
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
    upload_attempts: int = Field(default=6, ge=1)
    callback_deadline_seconds: float = Field(default=3600.0, gt=0)
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

    @property
    def callback_url(self) -> str:
        return f"{self.api_url.rstrip('/')}/api/job-callback"
