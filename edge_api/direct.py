"""The hot path's statements: SQLAlchemy Core, built once; on Postgres, compiled once and run by asyncpg.

Every submit and status read runs two or three single statements. Through SQLAlchemy's execution layer
each costs ≈ 0.2 ms of the API's CPU beside asyncpg's own ≈ 0.05 ms (measured in process, see
docs/benchmarks.md): as much as the rest of the request. So these statements are still written once with
SQLAlchemy Core (one definition for Postgres and SQLite, parameters named `p_…`), compiled once for the
asyncpg dialect, and run on a plain asyncpg pool; SQLite, and every other statement, keeps the engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.db import StoreUnavailable, is_unreachable

Row = dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A statement with named parameters, and its Postgres text with the parameters' positional order.

    Values written into the statement (`status == "queued"`) are parameters too once compiled; they
    keep their values, and only the statement's own `bindparam`s come from each call.
    """

    statement: sa.Executable
    sql: str = field(init=False)
    names: tuple[str, ...] = field(init=False)
    fixed: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        compiled = self.statement.compile(dialect=asyncpg_dialect())  # type: ignore[attr-defined]
        names = tuple(compiled.positiontup or ())
        object.__setattr__(self, "sql", compiled.string)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "fixed", {name: compiled.binds[name].effective_value for name in names
                                           if not compiled.binds[name].required})

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] if name in params else self.fixed[name] for name in self.names]


class Runner(Protocol):
    async def rows(self, prepared: Prepared, params: Mapping[str, Any]) -> list[Row]: ...

    async def aclose(self) -> None: ...


class EngineRunner:
    """Any database: the statement through the engine, in autocommit (no BEGIN/COMMIT round trips)."""

    def __init__(self, autocommit: AsyncEngine) -> None:
        self._engine = autocommit

    async def rows(self, prepared: Prepared, params: Mapping[str, Any]) -> list[Row]:
        try:
            async with self._engine.connect() as conn:
                result = await conn.execute(prepared.statement, dict(params))
                return [dict(row) for row in result.mappings()] if result.returns_rows else []
        except (sa.exc.DBAPIError, OSError) as exc:
            if is_unreachable(exc):
                raise StoreUnavailable(str(exc)) from exc
            raise

    async def aclose(self) -> None:
        """The engine belongs to the caller."""


class PoolRunner:
    """Postgres: the compiled text on asyncpg's own pool (asyncpg prepares and caches each statement)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, engine: AsyncEngine, size: int) -> PoolRunner:
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, init=json_codecs, reset=_keep_session)
        return cls(pool)

    async def rows(self, prepared: Prepared, params: Mapping[str, Any]) -> list[Row]:
        try:
            records = await self._pool.fetch(prepared.sql, *prepared.args(params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            # The store handles constraint violations one way, whichever runner met them.
            raise sa.exc.IntegrityError(prepared.sql, None, exc) from exc
        except _UNREACHABLE as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        return [dict(record) for record in records]

    async def aclose(self) -> None:
        await self._pool.close()


# What asyncpg raises when Postgres is away: refused or dropped connections, a server shutting down or
# starting up, no connection slots left.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError)


async def json_codecs(conn: asyncpg.Connection) -> None:
    # As SQLAlchemy does for its connections: JSON columns in and out as Python objects.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Nothing to reset: these statements change no session state, and each runs in autocommit.

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: a round trip per statement (≈ 70 µs of CPU, measured).
    """
