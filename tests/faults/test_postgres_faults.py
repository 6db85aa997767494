"""Postgres goes away for a while under load: refusals are clean 503s, and every job accepted completes once.

The API reaches Postgres through a proxy that drops every connection and refuses new ones for 0.3-3 s at
random moments, while clients submit with Idempotency-Keys and workers run the jobs and call back. A
statement cut mid-flight may have committed: the client then saw a 503 for a job that exists, and its
retry with the same key must return that job (counted in `ambiguous_503`), never make a second one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chaos import Partitions, jobs_while_breaking
from invariants import record, scaled
from proxy import tcp_proxy
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from edge_api.settings import ApiSettings
from jobs.db import open_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
async def direct_store(chaos_settings: ApiSettings) -> AsyncIterator[AsyncEngine]:
    """The test's own way to the store, around the proxy that the API goes through."""
    engine = open_engine(chaos_settings.database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def test_postgres_unreachable_for_a_while_refuses_cleanly_and_completes_everything_accepted(
        chaos_settings: ApiSettings, direct_store: AsyncEngine, tiny_checkpoints: Path, tmp_path: Path,
        started: float) -> None:
    total = scaled(200)
    database = make_url(chaos_settings.database_url)
    assert database.port is not None
    async with tcp_proxy(database.port) as proxy:
        partitions = Partitions(proxy, longest=3.0)
        proxied = database.set(port=proxy.port).render_as_string(hide_password=False)
        settings = chaos_settings.model_copy(update={"database_url": proxied})
        submitter, figures = await jobs_while_breaking(settings, total, tiny_checkpoints, tmp_path, partitions,
                                                       proxy.restore, store=direct_store, commit_may_be_lost=True)
    # Every job the API accepted completes once Postgres is back: none may fail for the outage.
    figures.lost += figures.failed
    record("postgres-unreachable", figures, started, outages=proxy.cuts, outage_seconds=round(partitions.seconds, 1),
           refused_503=submitter.refusals.get(503, 0), ambiguous_503=len(submitter.ambiguous), submits=total)
