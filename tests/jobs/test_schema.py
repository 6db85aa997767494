"""The Postgres schema of record (supabase/migrations) against the SQLAlchemy tables, by reflection; RLS;
the status-transition trigger; and migrations that apply once."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from servers import PostgresServer
from sqlalchemy.dialects import postgresql

from jobs.db import open_engine
from jobs.migrations import MIGRATIONS, apply_migrations, plain_dsn
from jobs.status import JobStatus
from jobs.tables import metadata

PG = postgresql.dialect()


def _type(value: Any) -> str:
    return str(value.compile(dialect=PG))


def model_schema() -> dict[str, dict[str, Any]]:
    """What jobs/tables.py declares, in the shape the reflection below produces."""
    schema: dict[str, dict[str, Any]] = {}
    for table in metadata.sorted_tables:
        schema[table.name] = {
            # (type, nullable, has a default): a bigserial's default is its sequence.
            "columns": {c.name: (_type(c.type), c.nullable, c.server_default is not None or c.autoincrement is True)
                        for c in table.columns},
            "primary_key": [c.name for c in table.primary_key.columns],
            "unique": sorted((u.name, tuple(c.name for c in u.columns))
                             for u in table.constraints if isinstance(u, sa.UniqueConstraint)),
            "foreign_keys": sorted((tuple(fk.parent.name for fk in f.elements), f.referred_table.name,
                                    tuple(fk.column.name for fk in f.elements), f.ondelete)
                                   for f in table.foreign_key_constraints),
            "indexes": sorted((i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes),
            "checks": sorted(str(c.name) for c in table.constraints if isinstance(c, sa.CheckConstraint)),
        }
    return schema


def reflected_schema(sync_conn: sa.Connection) -> dict[str, dict[str, Any]]:
    inspector = sa.inspect(sync_conn)
    schema: dict[str, dict[str, Any]] = {}
    for name in inspector.get_table_names(schema="public"):
        schema[name] = {
            "columns": {c["name"]: (_type(c["type"]), c["nullable"], c["default"] is not None)
                        for c in inspector.get_columns(name, schema="public")},
            "primary_key": inspector.get_pk_constraint(name, schema="public")["constrained_columns"],
            "unique": sorted((u["name"], tuple(u["column_names"]))
                             for u in inspector.get_unique_constraints(name, schema="public")),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                    tuple(f["referred_columns"]), f["options"].get("ondelete", "").upper() or None)
                                   for f in inspector.get_foreign_keys(name, schema="public")),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(name, schema="public")
                              if not i.get("duplicates_constraint")),
            "checks": sorted(c["name"] for c in inspector.get_check_constraints(name, schema="public")),
        }
    return schema


@pytest.fixture(scope="module")
async def reflected(pg_template: str) -> dict[str, dict[str, Any]]:
    """The schema of the template database that every test database is copied from (read only here)."""
    engine = open_engine(pg_template)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(reflected_schema)
    finally:
        await engine.dispose()


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain_dsn(postgres_url))
    yield conn
    await conn.close()


MODEL = model_schema()
TABLES = sorted(MODEL)


def test_the_tables_are_the_ones_the_contract_names() -> None:
    assert set(TABLES) == {"profiles", "jobs", "credit_ledger", "assets", "callback_receipts", "queue_messages",
                           "workers", "locks", "webhook_deliveries", "webhook_attempts", "webhook_gone_urls",
                           "rate_counters"}
    client_columns = ["id", "user_id", "job_type", "format", "quality", "model_type", "status", "metadata",
                      "error_message", "attempts", "max_attempts", "started_at", "completed_at", "created_at",
                      "project_id", "image_id", "video_id"]
    assert list(MODEL["jobs"]["columns"])[: len(client_columns)] == client_columns
    assert "token_balance" in MODEL["profiles"]["columns"]


def test_the_migration_creates_exactly_the_declared_tables(reflected: dict[str, dict[str, Any]]) -> None:
    assert sorted(reflected) == TABLES


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("aspect", ["columns", "primary_key", "unique", "foreign_keys", "indexes", "checks"])
def test_migration_matches_the_tables_by_reflection(reflected: dict[str, dict[str, Any]], table: str,
                                                     aspect: str) -> None:
    assert reflected[table][aspect] == MODEL[table][aspect]


async def test_row_level_security_is_enabled_on_every_table(db: asyncpg.Connection) -> None:
    rows = await db.fetch("select relname, relrowsecurity from pg_class "
                          "where relnamespace = 'public'::regnamespace and relkind = 'r'")
    assert {r["relname"]: r["relrowsecurity"] for r in rows} == dict.fromkeys(TABLES, True)


async def _insert_job(db: asyncpg.Connection, user_id: uuid.UUID, status: str = "queued") -> uuid.UUID:
    job_id = uuid.uuid4()
    await db.execute(
        "insert into public.jobs (id, user_id, job_type, format, quality, model_type, status, metadata, queue, price)"
        " values ($1, $2, 'image_fast', 'image', 'fast', 'wan', $3, '{}'::jsonb, 'wan_queue', 1)",
        job_id, user_id, status)
    return job_id


async def _as_user(db: asyncpg.Connection, query: str, setting: str, sub: str) -> list[asyncpg.Record]:
    async with db.transaction():
        await db.execute("set local role authenticated")
        value = json.dumps({"sub": sub, "role": "authenticated"}) if setting == "request.jwt.claims" else sub
        await db.execute("select set_config($1, $2, true)", setting, value)
        return list(await db.fetch(query))


async def test_an_authenticated_client_reads_only_its_own_jobs(db: asyncpg.Connection) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    alice_jobs = {await _insert_job(db, alice) for _ in range(2)}
    bob_jobs = {await _insert_job(db, bob)}
    seen_by_alice = await _as_user(db, "select id from public.jobs", "request.jwt.claims", str(alice))
    assert {r["id"] for r in seen_by_alice} == alice_jobs
    seen_by_bob = await _as_user(db, "select id from public.jobs", "request.jwt.claims", str(bob))
    assert {r["id"] for r in seen_by_bob} == bob_jobs


async def test_auth_uid_reads_either_claims_setting_in_any_order_on_one_connection(db: asyncpg.Connection) -> None:
    # PostgREST sets `request.jwt.claims` (or, older, `request.jwt.claim.sub`) per transaction on pooled
    # connections: a setting left empty by an earlier transaction must not hide the current one.
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    assert await _as_user(db, "select auth.uid()::text as uid", "request.jwt.claim.sub", alice) == [(alice,)]
    assert await _as_user(db, "select auth.uid()::text as uid", "request.jwt.claims", bob) == [(bob,)]
    assert await _as_user(db, "select auth.uid()::text as uid", "request.jwt.claim.sub", alice) == [(alice,)]
    async with db.transaction():  # neither setting: nobody
        await db.execute("set local role authenticated")
        assert await db.fetchval("select auth.uid()") is None


async def test_an_authenticated_client_cannot_write_or_read_internal_tables(db: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    for statement in ("update public.jobs set status = 'completed'",
                      "insert into public.profiles (id, token_balance) values (auth.uid(), 1000)",
                      "select * from public.callback_receipts"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await _as_user(db, statement, "request.jwt.claims", str(user))


async def test_an_anonymous_client_reads_nothing(db: asyncpg.Connection) -> None:
    await _insert_job(db, uuid.uuid4())
    async with db.transaction():
        await db.execute("set local role anon")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.fetch("select id from public.jobs")


PAIRS = [(a, b) for a, b in itertools.product(JobStatus, JobStatus) if a is not b]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_the_trigger_allows_exactly_the_moves_of_the_status_machine(db: asyncpg.Connection,
                                                                         source: JobStatus,
                                                                         target: JobStatus) -> None:
    job_id = await _insert_job(db, uuid.uuid4(), source.value)
    update = "update public.jobs set status = $2 where id = $1"
    if source.can_move_to(target):
        await db.execute(update, job_id, target.value)
        assert await db.fetchval("select status from public.jobs where id = $1", job_id) == target.value
    else:
        with pytest.raises(asyncpg.CheckViolationError, match="illegal job transition"):
            await db.execute(update, job_id, target.value)


async def test_the_trigger_refuses_completed_back_to_processing(db: asyncpg.Connection) -> None:
    job_id = await _insert_job(db, uuid.uuid4(), "completed")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("update public.jobs set status = 'processing' where id = $1", job_id)
    # Other columns of a terminal job may still change (the callback merges metadata).
    await db.execute("update public.jobs set progress = 100 where id = $1", job_id)


async def test_the_ledger_refuses_a_second_charge_for_one_job(db: asyncpg.Connection) -> None:
    user = uuid.uuid4()
    job_id = await _insert_job(db, user)
    insert = "insert into public.credit_ledger (user_id, job_id, kind, amount) values ($1, $2, $3, $4)"
    await db.execute(insert, user, job_id, "charge", -1)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, user, job_id, "charge", -1)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("insert into public.profiles (id, token_balance) values ($1, -1)", user)


async def test_applying_the_migrations_again_is_a_no_op(postgres_url: str, db: asyncpg.Connection,
                                                        reflected: dict[str, dict[str, Any]]) -> None:
    recorded = await db.fetch("select version from supabase_migrations.schema_migrations")
    assert [r["version"] for r in recorded] == [p.stem.partition("_")[0] for p in sorted(MIGRATIONS.glob("*.sql"))]
    assert await apply_migrations(postgres_url) == []
    engine = open_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(reflected_schema) == reflected
    finally:
        await engine.dispose()
    assert len(await db.fetch("select version from supabase_migrations.schema_migrations")) == len(recorded)


async def test_migrations_apply_to_an_empty_database_once(pg_server: PostgresServer) -> None:
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.url)
    await admin.execute(f"create database {name}")
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    try:
        first = await apply_migrations(url)
        assert first == [p.stem.partition("_")[0] for p in sorted(MIGRATIONS.glob("*.sql"))]
        assert await apply_migrations(url) == []
    finally:
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.close()
