-- The app's webhooks: the URL and events a job asked for, and an outbox of deliveries written in the
-- transaction of each status change (delivered by the API, see docs/api.md, Webhooks).
alter table public.jobs add column if not exists webhook_url text;
alter table public.jobs add column if not exists webhook_events jsonb;

create table public.webhook_deliveries (
    id bigserial primary key,
    job_id uuid not null references public.jobs (id) on delete cascade,
    event text not null,
    message_id text not null,
    url text not null,
    snapshot jsonb not null,
    state text not null default 'pending',
    attempts integer not null default 0,
    next_attempt_at timestamptz not null,
    lease_until timestamptz,
    delivered_at timestamptz,
    created_at timestamptz not null default now(),
    constraint webhook_deliveries_state_check check (state in ('pending', 'delivered', 'failed', 'gone')),
    constraint webhook_deliveries_message_id_key unique (message_id)
);
create index webhook_deliveries_state_next_attempt_at_idx on public.webhook_deliveries (state, next_attempt_at);
create index webhook_deliveries_job_id_id_idx on public.webhook_deliveries (job_id, id);

create table public.webhook_attempts (
    id bigserial primary key,
    delivery_id bigint not null references public.webhook_deliveries (id) on delete cascade,
    started_at timestamptz not null,
    duration_ms integer not null,
    status_code integer,
    error text,
    location text
);
create index webhook_attempts_delivery_id_idx on public.webhook_attempts (delivery_id);

create table public.webhook_gone_urls (
    url text primary key,
    created_at timestamptz not null default now()
);

-- Served by the API only (the log is `GET /api/jobs/{id}/webhooks`): no client reads these directly.
alter table public.webhook_deliveries enable row level security;
alter table public.webhook_attempts enable row level security;
alter table public.webhook_gone_urls enable row level security;
