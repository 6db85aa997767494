"""Opening the store: one async SQLAlchemy engine over asyncpg (Postgres) or aiosqlite (SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobs.tables import metadata


def async_url(url: str) -> str:
    """Accept the URLs people paste (`postgres://`, `postgresql://`, `sqlite:///`) and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    driver = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


class StoreUnavailable(Exception):
    """The database cannot be reached: refused, dropped, shutting down, or out of connections."""


def is_unreachable(exc: BaseException) -> bool:
    """Whether an error means the database is away (try again later), not that a statement is wrong."""
    if isinstance(exc, StoreUnavailable | ConnectionError | TimeoutError | sa.exc.TimeoutError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
    return False


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def open_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """An engine with pooled connections; SQLite gets WAL and a busy timeout so the worker can share it."""
    full = async_url(url)
    if full.startswith("sqlite"):
        engine = create_async_engine(full, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # A fixed pool (no overflow connections opened and closed under load) and no pre-ping (a
    # BEGIN/ROLLBACK on every checkout): a dropped connection is invalidated on its first error.
    return create_async_engine(full, pool_size=pool_size, max_overflow=0, pool_pre_ping=False,
                               pool_recycle=1800)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


async def create_sqlite_schema(engine: AsyncEngine) -> None:
    """SQLite takes the tables straight from their definitions; Postgres takes the migrations.

    A data folder made by an earlier version gets the nullable columns added since (`ALTER TABLE … ADD
    COLUMN`), so an upgrade keeps every job, file and balance.
    """
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_add_missing_columns)


def _add_missing_columns(conn: sa.Connection) -> None:
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def insert_ignoring_conflicts(engine: AsyncEngine, table: Any) -> Any:
    """An INSERT of the engine's dialect that skips rows whose key already exists."""
    if is_sqlite(engine):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(table).on_conflict_do_nothing()


def upsert(engine: AsyncEngine, table: Any) -> Any:
    """The dialect's `insert` with `on_conflict_do_update` available."""
    if is_sqlite(engine):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(table)
