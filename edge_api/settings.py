"""The API process's configuration: the one place that reads the environment (prefix `OURVIDZ_`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from edge_api.rate_limits import Policy
from jobs.catalog import DEFAULT_CATALOG, QUEUES, Catalog
from jobs.messages import TERMINAL_WEBHOOK_EVENTS, WebhookEvent
from jobs.storage import StorageSettings


@dataclass(frozen=True, slots=True)
class RateLimits:
    submits: Policy
    requests: Policy
    anonymous: Policy


_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev-secret"}


class ApiSettings(StorageSettings):
    """Everything the API needs; secrets have no defaults in production."""

    model_config = SettingsConfigDict(env_prefix="OURVIDZ_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./.ourvidz/ourvidz.db"
    redis_url: str | None = Field(default=None, description="None: the jobs table is the queue.")
    # Postgres connections per API process: this many for the engine, as many again for the hot path.
    database_pool_size: int = Field(default=10, ge=1)

    # Auth: HS256 with the project's JWT secret, and/or asymmetric keys from the project's JWKS.
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str = "authenticated"
    jwks_cache_seconds: float = 600.0

    callback_secret: str = ""
    public_base_url: str = ""
    # Origins whose pages may call the API (CORS), comma-separated; `*` suits bearer-token auth (no cookies).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])

    # Storage (a local folder or Supabase Storage, see StorageSettings); the secret signs local URLs.
    files_secret: str = ""
    signed_url_seconds: int = 3600

    starting_credits: int = Field(default=0, ge=0)
    max_queue_depth: int = Field(default=1000, ge=1)
    # Fair use (docs/api.md, Limits). Each user's queued + running jobs per queue (`sdxl` or `sdxl_queue`
    # as the key; 0: no cap); over it a submit is a 429 and nothing is charged.
    user_active_jobs: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: {"sdxl_queue": 10, "wan_queue": 4})
    # Requests per user (or per client address, where there is none) in each window; 0: no limit. Workers'
    # callbacks and the health routes are never limited.
    rate_limit_submits: int = Field(default=60, ge=0)
    rate_limit_requests: int = Field(default=600, ge=0)
    rate_limit_anonymous: int = Field(default=300, ge=0)
    rate_limit_window_seconds: int = Field(default=60, ge=1)
    # Fair order within a queue: at most this many jobs beyond one per live worker wait in the queue's list;
    # the rest are fed in as it drains, each user's next job after everyone else's earlier ones. 0: no order
    # but arrival (every job is pushed at once).
    fair_lookahead: int = Field(default=1, ge=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_attempts: int = Field(default=3, ge=1)
    lease_seconds: float = Field(default=120.0, gt=0)
    job_timeout_seconds: float = Field(default=900.0, gt=0)
    queue_timeout_seconds: float = Field(default=3600.0, gt=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    outbox_grace_seconds: float = Field(default=10.0, ge=0)
    sweeper_enabled: bool = True
    catalog_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)

    # RunPod serverless: queues served by an endpoint instead of pull workers, e.g. {"wan_queue": "abc123"}
    # (`wan` works too). The key stays here: workers never need it.
    runpod_endpoints: dict[str, str] = Field(default_factory=dict)
    runpod_api_key: str | None = None
    runpod_api_url: str = "https://api.runpod.ai/v2"
    # A processing job that reported nothing for this long has its RunPod job's status checked.
    runpod_reconcile_seconds: float = Field(default=30.0, gt=0)
    # A RunPod job taken by a worker that has not claimed its job after this long (a cold start loads the
    # models first) is canceled and the job dispatched again: that worker died before it could claim.
    runpod_start_timeout_seconds: float = Field(default=600.0, gt=0)

    # The app's webhooks (docs/api.md, Webhooks). The secret (`whsec_…`) signs deliveries; it is the app's,
    # apart from the workers' callback secret. Without one, a job that asks for a webhook is refused.
    webhook_secret: str = ""
    webhook_url: str | None = Field(default=None, description="For jobs that name no webhook of their own.")
    webhook_events: Annotated[list[WebhookEvent], NoDecode] = Field(
        default_factory=lambda: list(TERMINAL_WEBHOOK_EVENTS))
    # None: refused in production, allowed otherwise (a receiver on this machine, in development).
    webhook_allow_private_addresses: bool | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_interval_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(default=86400.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1)

    @field_validator("webhook_events", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # `OURVIDZ_WEBHOOK_EVENTS=completed,failed`, like the worker's `OURVIDZ_QUEUES`.
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("runpod_endpoints", "user_active_jobs", mode="after")
    @classmethod
    def _by_queue(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        named = {(q if q.endswith("_queue") else f"{q}_queue"): e for q, e in value.items()}
        unknown = [q for q in named if q not in QUEUES]
        if unknown:
            raise ValueError(f"OURVIDZ_{str(info.field_name).upper()} names unknown queues {unknown}; "
                             f"choose from {list(QUEUES)}")
        return named

    @property
    def rate_limits(self) -> RateLimits:
        window = self.rate_limit_window_seconds
        return RateLimits(Policy("submit", self.rate_limit_submits, window),
                          Policy("requests", self.rate_limit_requests, window),
                          Policy("anonymous", self.rate_limit_anonymous, window))

    def active_cap(self, queue: str) -> int:
        return self.user_active_jobs.get(queue, 0)

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> ApiSettings:
        if self.runpod_endpoints and not self.runpod_api_key:
            raise ValueError("OURVIDZ_RUNPOD_ENDPOINTS needs OURVIDZ_RUNPOD_API_KEY")
        if self.environment != "production":
            return self
        if self.webhook_url and self.webhook_secret.lower() in _PLACEHOLDERS:
            raise ValueError("OURVIDZ_WEBHOOK_URL needs OURVIDZ_WEBHOOK_SECRET in production")
        if self.callback_secret.lower() in _PLACEHOLDERS:
            raise ValueError("OURVIDZ_CALLBACK_SECRET must be set to a real secret in production")
        if self.jwt_secret is not None and self.jwt_secret.lower() in _PLACEHOLDERS:
            raise ValueError("OURVIDZ_JWT_SECRET is a placeholder")
        if self.jwt_secret is None and self.jwks_url is None:
            raise ValueError("set OURVIDZ_JWT_SECRET or OURVIDZ_JWKS_URL in production")
        if self.storage == "local" and self.files_secret.lower() in _PLACEHOLDERS:
            raise ValueError("OURVIDZ_FILES_SECRET must be set when local storage serves files in production")
        return self

    @property
    def webhooks_may_reach_private_addresses(self) -> bool:
        if self.webhook_allow_private_addresses is not None:
            return self.webhook_allow_private_addresses
        return self.environment != "production"

    @property
    def catalog(self) -> Catalog:
        return DEFAULT_CATALOG.with_overrides(self.catalog_overrides) if self.catalog_overrides else DEFAULT_CATALOG
