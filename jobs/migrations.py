"""Applying `supabase/migrations/*.sql` to a Postgres, in order, once each (as the Supabase CLI records them).

Applied versions go to `supabase_migrations.schema_migrations`, the table the Supabase CLI keeps, so
a later `supabase db push` sees them as applied. A plain Postgres first gets the shim that provides
what Supabase would (`auth.uid()`, the `authenticated` role).
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
# An installed package carries the SQL as jobs/supabase/; a checkout keeps it in supabase/ (pyproject.toml).
ROOT = _HERE / "supabase" if (_HERE / "supabase" / "migrations").is_dir() else _HERE.parent / "supabase"
MIGRATIONS = ROOT / "migrations"
SHIM = ROOT / "shim" / "plain_postgres.sql"

_TRACKING = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
    version text primary key, statements text[], name text
);
"""


def plain_dsn(url: str) -> str:
    """asyncpg wants `postgresql://`, not SQLAlchemy's `postgresql+asyncpg://`."""
    return url.replace("postgresql+asyncpg://", "postgresql://").replace("postgres://", "postgresql://")


async def apply_migrations(url: str, directory: Path = MIGRATIONS) -> list[str]:
    """Apply the pending migrations; returns the versions applied now."""
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        if not await conn.fetchval("select exists (select from pg_namespace where nspname = 'auth')"):
            await conn.execute(SHIM.read_text())
        await conn.execute(_TRACKING)
        done = {r["version"] for r in await conn.fetch("select version from supabase_migrations.schema_migrations")}
        applied = []
        for path in sorted(directory.glob("*.sql")):
            version, _, name = path.stem.partition("_")
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("insert into supabase_migrations.schema_migrations (version, name) values ($1, $2)",
                                   version, name)
            log.info("applied migration %s", path.name)
            applied.append(version)
        return applied
    finally:
        await conn.close()
