"""Schemathesis against the live API's OpenAPI schema: for every operation, generated requests (valid and invalid,
with a valid token) get no 5xx and no answer that breaks the schema (status, content type, body).

Schemathesis calls with `requests`, which blocks: it runs in a thread while the API serves on this loop.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import schemathesis
from chaos import FAULT_CATALOG, FakeWorker, served
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from invariants import Figures, audit, record, scaled
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from edge_api.settings import ApiSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(url: str, token: str, examples: int) -> tuple[int, list[str]]:
    """Every operation, positive and negative data; returns (requests sent, failures)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent: list[int] = []
    failures: list[str] = []
    auth = {"authorization": f"Bearer {token}"}

    def runner(operation: Any, mode: GenerationMode) -> Any:
        @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
        @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            sent.append(1)
            response = case.call(base_url=url, headers=auth, timeout=30)
            if response.status_code == 400 and response.text == "Invalid HTTP request received.":
                return  # refused by the HTTP server before the app (a header or URL it cannot parse)
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, FailureGroup) as exc:  # schemathesis' failures, with the details
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                runner(operation, mode)()
            except Unsatisfiable:  # an operation without inputs has no invalid ones to send
                continue
    return len(sent), failures


async def test_generated_requests_get_no_5xx_and_no_answer_outside_the_schema(
        api_settings: ApiSettings, started: float) -> None:
    examples = scaled(100)
    settings_ = api_settings.model_copy(update={"catalog_overrides": FAULT_CATALOG})
    async with served(settings_) as api:
        user = uuid.uuid4()
        await api.set_balance(user, 10_000)  # so that valid submits are accepted
        # Rows for the reads to show: a completed job with its assets, a failed one, a queued one.
        worker = FakeWorker(api)
        await worker.heartbeat()
        for outcome in ("completed", "failed"):
            await api.submitted(user, "sdxl_image_fast")
            taken = await worker.take(timeout=1)
            assert taken is not None
            attempt = await worker.claim(taken[1]["id"])
            await worker.report(taken[1]["id"], outcome, attempt=attempt, error_message="out of memory",
                                assets=worker.assets(taken[1], 2))
        await api.submitted(user, "sdxl_image_high")
        sent, failures = await asyncio.to_thread(fuzz, api.url, api.token(user), examples)
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={user: 10_000},
                              require_terminal=False)
        fuzzed = Figures(**{**figures.__dict__, "problems": list(figures.problems)})
        fuzzed.server_errors = sum("Server error" in f or "500" in f[:200] for f in failures)
        fuzzed.problems.extend(failures)
        record("schemathesis", fuzzed, started, requests=sent, examples_per_operation_and_mode=examples,
               schema_failures=len(failures))
        assert not failures, failures[:5]
