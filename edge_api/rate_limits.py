"""Request-rate limits per user, or per client address where there is no user: fixed windows.

Each (policy, subject, window) has one counter, shared by every API replica: a Redis key (`INCR`, with a
TTL of the window) or, without Redis, a row of `rate_counters` (one upsert). The answer carries the IETF
draft's fields (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "submit";q=60;w=60` and
`RateLimit: "submit";r=12;t=41` (quota, window; remaining, seconds until the window resets). A limiter
that cannot reach its counters lets the request through: the limits protect the service, and a Redis
outage must not turn into refusing everyone.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import redis.asyncio as aioredis
import sqlalchemy as sa
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import keys
from jobs.db import upsert, utcnow
from jobs.tables import rate_counters

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    quota: int  # requests per window; 0: unlimited
    window: int  # seconds

    @property
    def header(self) -> str:
        return f'"{self.name}";q={self.quota};w={self.window}'


@dataclass(frozen=True, slots=True)
class Decision:
    policy: Policy
    hits: int
    reset: int  # seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.hits <= self.policy.quota

    @property
    def headers(self) -> dict[str, str]:
        remaining = max(self.policy.quota - self.hits, 0)
        return {"RateLimit-Policy": self.policy.header,
                "RateLimit": f'"{self.policy.name}";r={remaining};t={self.reset}'}


class Counters(Protocol):
    async def hit(self, key: str, ttl: int) -> int:
        """Count one request on `key` (which ends within `ttl` seconds); returns the count so far."""
        ...

    async def aclose(self) -> None: ...


class CountersUnavailable(Exception):
    pass


class RedisCounters:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str) -> RedisCounters:
        return cls(aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0))

    async def hit(self, key: str, ttl: int) -> int:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, ttl)
                hits, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(str(exc)) from exc
        return int(hits)

    async def aclose(self) -> None:
        await self._redis.aclose()


class TableCounters:
    """The counters as rows, for the setups without Redis; rows of ended windows are deleted now and then."""

    PRUNE_SECONDS = 60.0

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pruned = time.monotonic()

    async def hit(self, key: str, ttl: int) -> int:
        now = utcnow()
        insert = upsert(self._engine, rate_counters).values(key=key, hits=1, expires_at=now + timedelta(seconds=ttl))
        statement = insert.on_conflict_do_update(index_elements=[rate_counters.c.key],
                                                 set_={"hits": rate_counters.c.hits + 1})
        try:
            async with self._engine.connect() as conn:
                hits = (await conn.execute(statement.returning(rate_counters.c.hits))).scalar_one()
                if time.monotonic() - self._pruned > self.PRUNE_SECONDS:
                    self._pruned = time.monotonic()
                    await conn.execute(sa.delete(rate_counters).where(rate_counters.c.expires_at < now))
        except (sa.exc.DBAPIError, OSError) as exc:
            raise CountersUnavailable(str(exc)) from exc
        return int(hits)

    async def aclose(self) -> None:
        """The engine belongs to the caller."""


class RateLimiter:
    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    async def check(self, policy: Policy, subject: str) -> Decision | None:
        """Count the request; None when the policy is unlimited or the counters cannot be reached."""
        if policy.quota <= 0:
            return None
        now = time.time()
        window = int(now // policy.window)
        reset = max(1, math.ceil((window + 1) * policy.window - now))
        try:
            hits = await self._counters.hit(keys.rate_counter(policy.name, subject, window), reset + 1)
        except CountersUnavailable as exc:
            log.warning("rate limits not checked: %s", exc)
            return None
        return Decision(policy, hits, reset)

    async def aclose(self) -> None:
        await self._counters.aclose()
