-- ourvidz: the jobs, credits and assets schema (Supabase CLI migration; the Postgres schema of record).
-- Tables and columns that ourvidz client apps read directly keep their names: jobs, profiles.token_balance.
-- Row-level security: a Supabase client (role `authenticated`) reads only its own rows; every write goes
-- through the API with the service role.

create table if not exists public.profiles (
    id uuid primary key,
    token_balance integer not null default 0,
    created_at timestamptz not null default now(),
    constraint profiles_token_balance_check check (token_balance >= 0)
);
-- On an existing ourvidz project, profiles exists already: add what we need, keep what is there.
alter table public.profiles add column if not exists token_balance integer not null default 0;
alter table public.profiles add column if not exists created_at timestamptz not null default now();

create table public.jobs (
    id uuid primary key,
    user_id uuid not null,
    job_type text not null,
    format text not null,
    quality text not null,
    model_type text not null,
    status text not null default 'queued',
    metadata jsonb not null,
    error_message text,
    attempts integer not null default 0,
    max_attempts integer not null default 3,
    started_at timestamptz,
    completed_at timestamptz,
    created_at timestamptz not null default now(),
    project_id uuid,
    image_id uuid,
    video_id uuid,
    queue text not null,
    price integer not null,
    progress integer not null default 0,
    enqueued_at timestamptz,
    lease_until timestamptz,
    worker_id text,
    idempotency_key text,
    request_hash text,
    updated_at timestamptz not null default now(),
    constraint jobs_status_check check (status in ('queued', 'processing', 'completed', 'failed', 'canceled')),
    constraint jobs_progress_check check (progress between 0 and 100),
    constraint jobs_user_id_idempotency_key_key unique (user_id, idempotency_key)
);
create index jobs_user_id_created_at_idx on public.jobs (user_id, created_at);
create index jobs_status_queue_created_at_idx on public.jobs (status, queue, created_at);

-- The status machine, enforced by the store itself: a completed job never goes back.
create or replace function public.ourvidz_check_job_transition() returns trigger
language plpgsql as $$
begin
    if new.status = old.status then
        return new;
    end if;
    if (old.status, new.status) in (
        ('queued', 'processing'), ('queued', 'canceled'), ('queued', 'failed'),
        ('processing', 'completed'), ('processing', 'failed'), ('processing', 'queued')
    ) then
        return new;
    end if;
    raise exception 'illegal job transition % -> % for job %', old.status, new.status, old.id
        using errcode = 'check_violation';
end;
$$;

create trigger jobs_status_transition
    before update of status on public.jobs
    for each row execute function public.ourvidz_check_job_transition();

create table public.credit_ledger (
    id bigserial primary key,
    user_id uuid not null,
    job_id uuid not null references public.jobs (id) on delete cascade,
    kind text not null,
    amount integer not null,
    created_at timestamptz not null default now(),
    constraint credit_ledger_kind_check check (kind in ('charge', 'refund')),
    constraint credit_ledger_job_id_kind_key unique (job_id, kind)
);
create index credit_ledger_user_id_idx on public.credit_ledger (user_id);

create table public.assets (
    id uuid primary key,
    user_id uuid not null,
    job_id uuid not null references public.jobs (id) on delete cascade,
    kind text not null,
    bucket text not null,
    path text not null,
    content_type text not null,
    size_bytes bigint not null default 0,
    position integer not null,
    metadata jsonb not null,
    created_at timestamptz not null default now(),
    constraint assets_kind_check check (kind in ('image', 'video')),
    constraint assets_job_id_position_key unique (job_id, position)
);
create index assets_user_id_created_at_idx on public.assets (user_id, created_at, id);

create table public.callback_receipts (
    webhook_id text primary key,
    job_id uuid not null,
    body_sha256 text not null,
    status_code integer not null,
    response jsonb not null,
    created_at timestamptz not null default now()
);

-- The queue for Redis-free setups (Postgres alone): claimed with FOR UPDATE SKIP LOCKED.
create table public.queue_messages (
    id bigserial primary key,
    queue text not null,
    job_id text not null,
    payload text not null,
    worker_id text,
    claimed_at timestamptz,
    created_at timestamptz not null default now()
);
create index queue_messages_queue_worker_id_id_idx on public.queue_messages (queue, worker_id, id);

create table public.workers (
    id text primary key,
    queues text not null,
    expires_at timestamptz not null
);

create table public.locks (
    name text primary key,
    owner text not null,
    expires_at timestamptz not null
);

-- Row-level security: clients read their own rows; the service role (the API) bypasses RLS.
alter table public.profiles enable row level security;
alter table public.jobs enable row level security;
alter table public.credit_ledger enable row level security;
alter table public.assets enable row level security;
alter table public.callback_receipts enable row level security;
alter table public.queue_messages enable row level security;
alter table public.workers enable row level security;
alter table public.locks enable row level security;

create policy "profiles: read own" on public.profiles for select to authenticated using (id = auth.uid());
create policy "jobs: read own" on public.jobs for select to authenticated using (user_id = auth.uid());
create policy "credit_ledger: read own" on public.credit_ledger for select to authenticated
    using (user_id = auth.uid());
create policy "assets: read own" on public.assets for select to authenticated using (user_id = auth.uid());

grant select on public.profiles, public.jobs, public.credit_ledger, public.assets to authenticated;
