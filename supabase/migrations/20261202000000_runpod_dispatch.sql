-- Jobs whose queue is dispatched to a RunPod serverless endpoint record the RunPod job that carries
-- them, so that the API can reconcile with `/status/{id}` and cancel with `/cancel/{id}`.
alter table public.jobs add column if not exists dispatch_id text;
