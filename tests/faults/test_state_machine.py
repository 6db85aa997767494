"""A Hypothesis state machine over the job's life: random sequences of submits, claims, callbacks (good,
replayed, stale, forged by a reused webhook-id), dead workers, Redis flushes, sweeps, time passing and
cancels, against the real API, Postgres and Redis. After every step the store keeps its promises.

Workers are simulated at the protocol level (the real queue claim, signed callbacks over HTTP): the
point is the API's state machine (docs/lifecycle.md), not generation. The machine runs in a thread; each step
runs its coroutine on the test's event loop, where the API serves.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from chaos import FAULT_CATALOG, FakeWorker, served
from harness import Api
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from invariants import audit, record, scaled

from edge_api.settings import ApiSettings
from jobs.db import utcnow
from jobs.tables import jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

T = TypeVar("T")
JOB_TYPES = ("sdxl_image_fast", "sdxl_image_high")
START_BALANCE = 12
TERMINAL = ("completed", "failed", "canceled")


@dataclass
class Held:
    payload: str
    message: dict[str, Any]
    attempt: int | None = None

    @property
    def message_queue(self) -> str:
        return "sdxl_queue" if self.message["type"].startswith("sdxl") else "wan_queue"


@dataclass
class Incarnation:
    """One life of a simulated worker: its id and the messages it took."""

    worker: FakeWorker
    held: list[Held] = field(default_factory=list)


class Totals:
    steps = 0
    examples = 0
    jobs = 0
    outcomes: dict[str, int] = {}  # noqa: RUF012 - shared across the machine's examples on purpose
    callbacks = 0
    replays = 0
    problems: list[str] = []  # noqa: RUF012 - shared across the machine's examples on purpose


def make_machine(api: Api, loop: asyncio.AbstractEventLoop, totals: type[Totals]) -> type[RuleBasedStateMachine]:
    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)

    async def reset() -> None:
        async with api.state.engine.begin() as conn:
            await conn.execute(sa.text("truncate jobs, credit_ledger, assets, callback_receipts, profiles, locks, "
                                       "queue_messages, workers cascade"))
        client = aioredis.Redis.from_url(api.settings.redis_url or "")
        await client.flushall()
        await client.aclose()

    class JobLife(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            run(reset())
            self.user = uuid.uuid4()
            run(api.set_balance(self.user, START_BALANCE))
            self.job_ids: list[str] = []
            self.workers = [Incarnation(FakeWorker(api, f"w{n}-1")) for n in range(2)]
            self.lives = [1, 1]
            for life in self.workers:
                run(life.worker.heartbeat())
            self.sent: list[tuple[str, bytes, int]] = []  # webhook-id, body, first status
            self.terminal: dict[str, str] = {}
            totals.examples += 1

        # --- the client ----------------------------------------------------------------------------

        @rule(job_type=st.sampled_from(JOB_TYPES))
        def submit(self, job_type: str) -> None:
            response = run(api.submit(self.user, job_type))
            assert response.status_code in (200, 402), response.text
            if response.status_code == 200:
                self.job_ids.append(response.json()["job"]["id"])
                totals.jobs += 1

        @precondition(lambda self: self.job_ids)
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            job_id = data.draw(st.sampled_from(self.job_ids))
            response = run(api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(self.user)))
            assert response.status_code in (200, 409), response.text

        # --- the workers ---------------------------------------------------------------------------

        @rule(n=st.integers(0, 1), data=st.data(), action=st.sampled_from([
            "run_completed", "run_completed", "run_failed", "take_and_claim", "take_only", "claim_held",
            "complete_held", "fail_held", "hand_back_held", "stale_report", "kill"]))
        def worker(self, n: int, data: st.DataObject, action: str) -> None:
            """One worker's step: a whole healthy cycle, a part of one, a stale report, or its death."""
            if action == "kill":
                # Its heartbeat lapses; what it held is only in Redis now. The next life has a new id.
                run(self.workers[n].worker.die())
                self.lives[n] += 1
                self.workers[n] = Incarnation(FakeWorker(api, f"w{n}-{self.lives[n]}"))
                run(self.workers[n].worker.heartbeat())
                return
            if action in ("run_completed", "run_failed", "take_and_claim", "take_only"):
                taken = run(self.workers[n].worker.take(timeout=0.01))
                if taken is None:
                    return
                held = Held(*taken)
                self.workers[n].held.append(held)
                if action != "take_only":
                    self._claim(n, held)
                if action.startswith("run_") and held.attempt is not None:
                    self._finish(n, held, action.removeprefix("run_"), stale=False)
                return
            if not self.workers[n].held:
                return
            held = data.draw(st.sampled_from(self.workers[n].held))
            if action == "claim_held":
                self._claim(n, held)
            elif held.attempt is not None:
                outcome = {"complete_held": "completed", "fail_held": "failed", "hand_back_held": "queued",
                           "stale_report": data.draw(st.sampled_from(["completed", "failed", "processing"]))}[action]
                self._finish(n, held, outcome, stale=action == "stale_report")

        def _claim(self, n: int, held: Held) -> None:
            body = {"job_id": held.message["id"], "status": "processing", "progress": 0,
                    "worker_id": self.workers[n].worker.worker_id}
            status, answer = self._report(body)
            if status == 200:
                held.attempt = int(answer["attempt"])

        def _finish(self, n: int, held: Held, outcome: str, stale: bool) -> None:
            assert held.attempt is not None
            attempt = held.attempt - 1 if stale and held.attempt > 1 else held.attempt + 1 if stale else held.attempt
            body: dict[str, Any] = {"job_id": held.message["id"], "status": outcome, "attempt": attempt,
                                    "worker_id": self.workers[n].worker.worker_id}
            if outcome == "completed":
                body["assets"] = FakeWorker.assets(held.message, int(held.message["config"]["num_images"]))
            elif outcome in ("failed", "queued"):
                body["error_message"] = "out of memory"
            status, _ = self._report(body)
            if stale:
                assert status == 409, f"a stale {outcome} of attempt {attempt} (current {held.attempt}): {status}"
            elif outcome != "processing":
                self.workers[n].held.remove(held)
                if outcome == "queued":  # handed back: the worker puts the message back, as the real one does
                    run(api.state.queue.push_front(held.message_queue, held.payload))
                run(self.workers[n].worker.ack(held.payload))

        def _report(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            msg_id = f"msg_{uuid.uuid4().hex}"
            raw = json.dumps(body).encode()
            response = run(api.callback(body, msg_id=msg_id))
            assert response.status_code < 500, response.text
            self.sent.append((msg_id, raw, response.status_code))
            totals.callbacks += 1
            return response.status_code, response.json()

        @precondition(lambda self: self.sent)
        @rule(data=st.data(), same_body=st.booleans())
        def replay(self, data: st.DataObject, same_body: bool) -> None:
            """A callback delivered again with its webhook-id: the first answer again, or 409 for another body."""
            msg_id, raw, first = data.draw(st.sampled_from(self.sent))
            body = raw if same_body else raw.replace(b'"status": "', b'"status":  "')
            response = run(api.callback({}, msg_id=msg_id, raw=body))
            totals.replays += 1
            assert response.status_code == (first if same_body else 409), (first, response.text)

        # --- the infrastructure --------------------------------------------------------------------

        @rule(data=st.data(), action=st.sampled_from(["sweep", "sweep", "flush_redis", "lease_expires",
                                                      "deadline_passes", "queue_timeout_passes"]))
        def infrastructure(self, data: st.DataObject, action: str) -> None:
            """Redis loses everything, the sweeper passes, or time passes for one job."""
            if action == "sweep":
                assert run(api.state.sweeper.sweep())
            elif action == "flush_redis":
                async def flush() -> None:
                    client = aioredis.Redis.from_url(api.settings.redis_url or "")
                    await client.flushall()
                    await client.aclose()
                    for life in self.workers:  # the live workers' next heartbeat
                        await life.worker.heartbeat()

                run(flush())
            elif self.job_ids:
                job_id = uuid.UUID(data.draw(st.sampled_from(self.job_ids)))
                s = api.settings
                column, ago = {"lease_expires": ("lease_until", 1.0),
                               "deadline_passes": ("started_at", s.job_timeout_seconds + 1),
                               "queue_timeout_passes": ("created_at", s.queue_timeout_seconds + 1)}[action]

                async def backdate() -> None:
                    async with api.state.engine.begin() as conn:
                        await conn.execute(sa.update(jobs).where(jobs.c.id == job_id, jobs.c[column].is_not(None))
                                           .values({column: utcnow() - timedelta(seconds=ago)}))

                run(backdate())

        # --- the promises --------------------------------------------------------------------------

        @invariant()
        def promises_hold(self) -> None:
            totals.steps += 1
            figures = run(audit(api.state.engine, api.state.catalog, starting_balances={self.user: START_BALANCE},
                                require_terminal=False))
            assert not figures.broken(), figures.problems

        @invariant()
        def terminal_is_final(self) -> None:
            async def statuses() -> dict[str, str]:
                async with api.state.engine.connect() as conn:
                    return {str(i): s for i, s in await conn.execute(sa.select(jobs.c.id, jobs.c.status))}

            now = run(statuses())
            for job_id, status in self.terminal.items():
                assert now.get(job_id) == status, f"{job_id} was {status}, is now {now.get(job_id)}"
            self.terminal.update({j: s for j, s in now.items() if s in TERMINAL})

        def teardown(self) -> None:
            # Time runs out for every job still waiting or running: each ends terminal, refunded.
            async def finish() -> None:
                s = api.settings
                async with api.state.engine.begin() as conn:
                    await conn.execute(sa.update(jobs).where(jobs.c.status.not_in(TERMINAL)).values(
                        created_at=utcnow() - timedelta(seconds=s.queue_timeout_seconds + 1),
                        started_at=utcnow() - timedelta(seconds=s.job_timeout_seconds + 1)))
                await api.state.sweeper.sweep()
                figures = await audit(api.state.engine, api.state.catalog,
                                      starting_balances={self.user: START_BALANCE})
                totals.problems.extend(figures.problems)
                for name in ("completed", "failed", "canceled"):
                    totals.outcomes[name] = totals.outcomes.get(name, 0) + getattr(figures, name)
                assert not figures.broken(), figures.problems

            run(finish())

    return JobLife


async def test_the_job_state_machine_keeps_its_promises_under_random_faults(
        api_settings: ApiSettings, started: float) -> None:
    examples = scaled(120)
    config = api_settings.model_copy(update={"catalog_overrides": FAULT_CATALOG})
    async with served(config) as api:
        loop = asyncio.get_running_loop()
        machine = make_machine(api, loop, Totals)
        options = settings(max_examples=examples, stateful_step_count=40, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck))
        await asyncio.to_thread(run_state_machine_as_test, machine, settings=options)
        # Every example's store was audited after each step and at its end; these are the totals.
        figures = await audit(api.state.engine, api.state.catalog, starting_balances={}, require_terminal=False)
        figures.problems.extend(Totals.problems)
        figures.jobs = figures.accepted = Totals.jobs
        figures.completed, figures.failed, figures.canceled = (Totals.outcomes.get(k, 0) for k in
                                                               ("completed", "failed", "canceled"))
        record("state-machine", figures, started, examples=Totals.examples, steps=Totals.steps,
               callbacks=Totals.callbacks, replays=Totals.replays)
