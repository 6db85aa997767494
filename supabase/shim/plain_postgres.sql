-- What a Supabase project provides and a plain Postgres lacks, so the migrations apply anywhere:
-- the `anon`, `authenticated` and `service_role` roles and `auth.uid()` (from the `request.jwt.claims` setting).
-- `ourvidz migrate` applies this only when the database has no `auth` schema.
do $$
begin
    if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin; end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
    if not exists (select from pg_roles where rolname = 'service_role') then
        create role service_role nologin bypassrls;
    end if;
end
$$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- As Supabase defines it: a setting that an earlier transaction on the same pooled connection set is
-- '' afterwards, not NULL, so each one is read through nullif before falling back to the other.
create or replace function auth.uid() returns uuid
language sql stable as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
    )::uuid
$$;
