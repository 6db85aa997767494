"""The store's tables, once, for Postgres and SQLite alike (SQLAlchemy Core).

`supabase/migrations/*.sql` is the Postgres schema of record; a test applies it to a real Postgres
and compares it with these tables by reflection, so the two cannot drift. Names and columns that
ourvidz client apps read directly (`jobs`, `profiles.token_balance`) are kept as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from jobs.catalog import QUEUES

metadata = sa.MetaData()

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def active_jobs_column(queue: str) -> str:
    """The profile's count of the user's queued and running jobs on a queue (`sdxl_active_jobs`)."""
    return f"{queue.removesuffix('_queue')}_active_jobs"


profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("token_balance", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    *(sa.Column(active_jobs_column(q), sa.Integer, nullable=False, server_default=sa.text("0")) for q in QUEUES),
    sa.CheckConstraint("token_balance >= 0", name="profiles_token_balance_check"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("job_type", sa.Text, nullable=False),
    sa.Column("format", sa.Text, nullable=False),
    sa.Column("quality", sa.Text, nullable=False),
    sa.Column("model_type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'queued'")),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default=sa.text("3")),
    sa.Column("started_at", TS),
    sa.Column("completed_at", TS),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("project_id", sa.Uuid),
    sa.Column("image_id", sa.Uuid),
    sa.Column("video_id", sa.Uuid),
    # Columns ourvidz adds beside the ones client apps read.
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("price", sa.Integer, nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("enqueued_at", TS),
    sa.Column("lease_until", TS),
    sa.Column("worker_id", sa.Text),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("request_hash", sa.Text),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    # The RunPod job that carries this job, when its queue is dispatched to a serverless endpoint.
    sa.Column("dispatch_id", sa.Text),
    # Where the app wants this job's events pushed (docs/api.md, Webhooks), and which events.
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_events", JSONType),
    sa.CheckConstraint(
        "status in ('queued', 'processing', 'completed', 'failed', 'canceled')", name="jobs_status_check"
    ),
    sa.CheckConstraint("progress between 0 and 100", name="jobs_progress_check"),
    sa.UniqueConstraint("user_id", "idempotency_key", name="jobs_user_id_idempotency_key_key"),
)
sa.Index("jobs_user_id_created_at_idx", jobs.c.user_id, jobs.c.created_at)
sa.Index("jobs_status_queue_created_at_idx", jobs.c.status, jobs.c.queue, jobs.c.created_at)
# The fair order counts the jobs each user was served since the backlog began (edge_api/fair_order.py).
sa.Index("jobs_queue_completed_at_idx", jobs.c.queue, jobs.c.completed_at)

credit_ledger = sa.Table(
    "credit_ledger",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("kind in ('charge', 'refund')", name="credit_ledger_kind_check"),
    sa.UniqueConstraint("job_id", "kind", name="credit_ledger_job_id_kind_key"),
)
sa.Index("credit_ledger_user_id_idx", credit_ledger.c.user_id)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, nullable=False),
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("kind in ('image', 'video')", name="assets_kind_check"),
    sa.UniqueConstraint("job_id", "position", name="assets_job_id_position_key"),
)
sa.Index("assets_user_id_created_at_idx", assets.c.user_id, assets.c.created_at, assets.c.id)

callback_receipts = sa.Table(
    "callback_receipts",
    metadata,
    sa.Column("webhook_id", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Uuid, nullable=False),
    sa.Column("body_sha256", sa.Text, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", JSONType, nullable=False),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
)

# The queue of the Redis-free setups (embedded SQLite, or Postgres alone): one row per message,
# consumed with the same reliable-queue semantics as the Redis lists.
queue_messages = sa.Table(
    "queue_messages",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("worker_id", sa.Text),
    sa.Column("claimed_at", TS),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
)
sa.Index("queue_messages_queue_worker_id_id_idx", queue_messages.c.queue, queue_messages.c.worker_id,
         queue_messages.c.id)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("queues", sa.Text, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)

# Leader election for the sweeper without Redis: one row per lock, taken while expired or ours.
locks = sa.Table(
    "locks",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)

# The app's webhooks, as a transactional outbox: one row per event, written in the transaction of the
# status change it reports, delivered (and retried) by edge_api/webhook_delivery.py.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    # The `webhook-id` header: the same on every retry of this event, so receivers can deduplicate.
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    # The job's status fields as the event left them; the body is rendered from them at each attempt.
    sa.Column("snapshot", JSONType, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'pending'")),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", TS, nullable=False),
    sa.Column("lease_until", TS),
    sa.Column("delivered_at", TS),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("state in ('pending', 'delivered', 'failed', 'gone')", name="webhook_deliveries_state_check"),
    sa.UniqueConstraint("message_id", name="webhook_deliveries_message_id_key"),
)
sa.Index("webhook_deliveries_state_next_attempt_at_idx", webhook_deliveries.c.state,
         webhook_deliveries.c.next_attempt_at)
sa.Index("webhook_deliveries_job_id_id_idx", webhook_deliveries.c.job_id, webhook_deliveries.c.id)

# Each try of a delivery, for `GET /api/jobs/{id}/webhooks`.
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("location", sa.Text),
)
sa.Index("webhook_attempts_delivery_id_idx", webhook_attempts.c.delivery_id)

# URLs that answered 410 Gone: nothing more is delivered to them.
webhook_gone_urls = sa.Table(
    "webhook_gone_urls",
    metadata,
    sa.Column("url", sa.Text, primary_key=True),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
)

# Rate-limit counters where there is no Redis (the embedded mode; edge_api/rate_limits.py).
rate_counters = sa.Table(
    "rate_counters",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("hits", sa.Integer, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)
