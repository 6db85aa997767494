"""Fixtures of the fault tests: the API's settings for chaos (a sweeper that runs often, a queue that never
fills) and a catalog whose jobs take a fraction of a second with the tiny models."""

from __future__ import annotations

import time

import pytest
from chaos import FAULT_CATALOG

from edge_api.settings import ApiSettings


@pytest.fixture
def started() -> float:
    return time.monotonic()


@pytest.fixture(autouse=True)
def one_torch_thread_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model processes started during a fault test use one CPU thread each: two workers with torch's default
    of one thread per core fight over 2 cores and a tiny job takes 30 times longer (1.7 s instead of 0.06 s)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def chaos_settings(api_settings: ApiSettings) -> ApiSettings:
    return api_settings.model_copy(update={
        "catalog_overrides": FAULT_CATALOG, "sweeper_enabled": True, "sweep_interval_seconds": 0.2,
        "outbox_grace_seconds": 1.0, "max_queue_depth": 10**6,
        # The production default: each queue's list holds what the workers are about to take, the store the rest.
        "fair_lookahead": 1})
