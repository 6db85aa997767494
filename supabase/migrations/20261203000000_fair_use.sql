-- Fair use (docs/api.md, Limits). Each user's queued and running jobs per queue, beside the balance: the API checks the per-user cap in
-- the same conditional update that debits the credits (edge_api/active_jobs.py).
alter table public.profiles add column if not exists sdxl_active_jobs integer not null default 0;
alter table public.profiles add column if not exists wan_active_jobs integer not null default 0;

-- Jobs that are active when this migration runs are counted from the start.
update public.profiles p set
    sdxl_active_jobs = (select count(*) from public.jobs j
                        where j.user_id = p.id and j.queue = 'sdxl_queue' and j.status in ('queued', 'processing')),
    wan_active_jobs = (select count(*) from public.jobs j
                       where j.user_id = p.id and j.queue = 'wan_queue' and j.status in ('queued', 'processing'));

-- The fair order counts the jobs each user was served since the backlog began (edge_api/fair_order.py).
create index if not exists jobs_queue_completed_at_idx on public.jobs (queue, completed_at);

-- Rate-limit counters of the setups without Redis (edge_api/rate_limits.py); with Redis they live there.
create table if not exists public.rate_counters (
    key text primary key,
    hits integer not null,
    expires_at timestamptz not null
);
alter table public.rate_counters enable row level security;
