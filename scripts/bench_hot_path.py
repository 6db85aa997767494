"""What one submit costs the API's CPU, layer by layer, against the same work done with the bare drivers.

In one process, one request at a time (no concurrency, no HTTP parsing, no load generator): the CPU time
(`time.process_time`) of each layer of `POST /api/queue-job`, averaged over `--requests` calls, on real
Postgres and Redis servers started on free loopback ports. Beside each database step, the same statement
through SQLAlchemy's engine (what the API used before edge_api/direct.py) and on one bare asyncpg
connection (the floor). Postgres's and Redis's own CPU is not counted: only this process's.

    .venv/bin/python scripts/bench_hot_path.py              # ~30 s
    .venv/bin/python scripts/bench_hot_path.py --requests 200

`scripts/bench_api.py` measures the same path under load over HTTP; this one says where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Servers, api_env, command_line, machine, markdown_table, running_servers

JWT_SECRET = "bench-jwt-secret-that-is-long-enough-for-hs256"
BODY = json.dumps({"jobType": "sdxl_image_fast", "metadata": {"prompt": "a red fox in fresh snow"}}).encode()

Step = Callable[[int], Awaitable[Any]]


async def cpu_us(step: Step, count: int) -> float:
    """Microseconds of this process's CPU per call of `step(i)`, after a few unmeasured calls."""
    for i in range(min(20, count)):
        await step(i)
    started = time.process_time()
    for i in range(count):
        await step(i)
    return (time.process_time() - started) / count * 1e6


def asgi_caller(app: Any, tokens: list[str]) -> Step:
    """Calls the ASGI app as uvicorn would after parsing the request; fails on anything but a 200."""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/queue-job", "raw_path": b"/api/queue-job", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "app": app}

    async def call(i: int) -> None:
        answered: list[dict[str, Any]] = []
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if body_sent:
                await asyncio.Event().wait()  # the client never disconnects
            body_sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            answered.append(message)

        auth = (b"authorization", f"Bearer {tokens[i % len(tokens)]}".encode())
        await app({**scope, "headers": [*headers, auth]}, receive, send)
        if answered[0]["status"] != 200:
            raise RuntimeError(f"the API answered {answered[0]['status']}: {answered[1:]}")

    return call


async def measure(servers: Servers, count: int) -> list[list[object]]:
    import asyncpg
    from bench_api import seed_users

    from edge_api.active_jobs import NO_CAP
    from edge_api.app import create_app
    from edge_api.auth import Authenticator, VerifiedTokens, mint_token
    from edge_api.direct import EngineRunner, json_codecs
    from edge_api.settings import ApiSettings
    from edge_api.state import open_state
    from edge_api.store import CHARGE_AND_INSERT, MARK_ENQUEUED, job_row
    from edge_api.submit import _new_job, resolve_spec, submit_job
    from jobs.db import utcnow
    from jobs.messages import QueueJobRequest

    users = await seed_users(servers.database_url, 64, 10**9)
    tokens = [mint_token(JWT_SECRET, u) for u in users]
    with tempfile.TemporaryDirectory() as storage:
        os.environ.update(api_env(servers, jwt_secret=JWT_SECRET, callback_secret="bench", storage_dir=Path(storage)))
        settings = ApiSettings()
        state = await open_state(settings)
        bare = await asyncpg.connect(servers.database_url)
        await json_codecs(bare)  # as the API's pool does
        try:
            request = QueueJobRequest.model_validate_json(BODY)
            spec = resolve_spec(state, request.jobType)
            user = await state.auth.authenticate(f"Bearer {tokens[0]}")
            through_engine = EngineRunner(state.store.autocommit)
            rows: list[dict[str, Any]] = []

            # A cache of one token, asked for a different token each time: every call verifies.
            verifier = Authenticator(settings.jwt_audience, settings.jwt_secret, verified=VerifiedTokens(size=1))

            def charge_params(i: int) -> dict[str, Any]:
                new = _new_job(state, user, request, spec, None, (None, None))  # no webhook
                values = job_row(new)  # the row the store inserts
                rows.append(values)
                return {f"p_{k}": v for k, v in values.items()} | {"p_cap": NO_CAP}

            charge = CHARGE_AND_INSERT[spec.queue]

            async def charge_bare(i: int) -> Any:
                return await bare.fetch(charge.sql, *charge.args(charge_params(i)))

            async def mark_bare(i: int) -> Any:
                params = {"p_id": rows[i % len(rows)]["id"], "p_at": utcnow()}
                return await bare.execute(MARK_ENQUEUED.sql, *MARK_ENQUEUED.args(params))

            message = b"x" * 700  # about a queue message's size
            app = create_app(settings)
            app.state.ourvidz = state
            # (layer, what runs, floor name or None, step)
            steps: list[tuple[str, str, str | None, Step]] = [
                ("auth", "JWT verified by PyJWT (a token not seen before)", None,
                 lambda i: verifier.authenticate(f"Bearer {tokens[i % 64]}")),
                ("auth", "JWT from the cache of verified tokens (every later request)", None,
                 lambda i: state.auth.authenticate(f"Bearer {tokens[i % 64]}")),
                ("body", "QueueJobRequest validated from JSON", None,
                 _sync(lambda i: QueueJobRequest.model_validate_json(BODY))),
                ("charge", "debit + insert job + ledger, one statement: SQLAlchemy engine", "charge_bare",
                 lambda i: through_engine.rows(charge, charge_params(i))),
                ("charge", "the same: compiled once, asyncpg pool (the API now)", "charge_bare",
                 lambda i: state.store.hot.rows(charge, charge_params(i))),
                ("charge", "the same on one bare asyncpg connection (floor)", "charge_bare", charge_bare),
                ("push", "LPUSH of the message (redis-py, hiredis)", None,
                 lambda i: state.queue.push(spec.queue, message.decode())),
                ("mark", "UPDATE jobs SET enqueued_at: SQLAlchemy engine", "mark_bare",
                 lambda i: through_engine.rows(MARK_ENQUEUED, {"p_id": rows[i % len(rows)]["id"], "p_at": utcnow()})),
                ("mark", "the same: compiled once, asyncpg pool (the API now)", "mark_bare",
                 lambda i: state.store.hot.rows(MARK_ENQUEUED, {"p_id": rows[i % len(rows)]["id"], "p_at": utcnow()})),
                ("mark", "the same on one bare asyncpg connection (floor)", "mark_bare", mark_bare),
                ("service", "submit_job(): everything above, as the route calls it", None,
                 lambda i: submit_job(state, user, request, None)),
                ("app", "the whole ASGI app: middleware, routing, dependencies, answer", None,
                 asgi_caller(app, tokens)),
            ]
            results: list[tuple[str, str, str | None, float]] = []
            for layer, what, floor, step in steps:
                results.append((layer, what, floor, await cpu_us(step, count)))
        finally:
            await bare.close()
            await state.aclose()
    floors = {floor: us for _, what, floor, us in results if floor and "floor" in what}
    return [[layer, what, f"{us:,.1f}", f"{us / floors[floor]:.2f}" if floor else "–"]
            for layer, what, floor, us in results]


def _sync(function: Callable[[int], Any]) -> Step:
    async def step(i: int) -> Any:
        return function(i)

    return step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="calls per row (2000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    with running_servers() as servers:
        table = uvloop.run(measure(servers, args.requests))
    info = machine()
    print(f"## One submit's CPU by layer ({info['cpu']}; {args.requests} sequential calls per row)\n")
    print(markdown_table(["layer", "what runs", "API CPU µs per call", "/ floor"], table))
    print(f"\ncommand: {command_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
