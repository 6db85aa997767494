"""Fairness under load: what one user's flood does to everyone else's wait, with the fair-use limits off
("before") and on ("after"), and what the limits cost the API.

Real parts end to end: Postgres and Redis on free loopback ports, the API (`uvicorn edge_api.app:create_app`)
and one worker with tiny random-weight models (`handler.main.run_worker`), each in its own process. The
catalog is shrunk: every type 2 steps, SDXL 64x64 (say so when quoting figures).

For each configuration:
- **flood**: one user submits as fast as the API allows (`--flood-clients` connections for `--flood-seconds`);
  one second in, ten other users submit one job each. For each of those: the jobs ahead of it when it was
  accepted (its `queue_position` - 1) and the seconds from its submit to its start (`jobs.started_at`).
- **capacity**: `--clients` connections submitting as many distinct users (each well under the caps and the
  rate limits) for `--seconds`, then reading queued jobs: requests/s and p99, limits on against off.

"Off" is the API without caps, rate limits or fair order (`OURVIDZ_USER_ACTIVE_JOBS={}`, the three
`OURVIDZ_RATE_LIMIT_*=0`, `OURVIDZ_FAIR_LOOKAHEAD=0`); "on" is the API's defaults.

    .venv/bin/python scripts/bench_fairness.py           # ~2 minutes
    .venv/bin/python scripts/bench_fairness.py --quick   # ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api import HttpConnection, _http_request, run_closed_loop
from bench_common import (
    ApiProcess,
    api_env,
    command_line,
    machine,
    markdown_table,
    percentile,
    running_servers,
)
from bench_worker import CALLBACK_SECRET, JWT_SECRET, Conductor, WorkerProcess, small_catalog

OTHERS = 10
JOB_TYPE = "sdxl_image_fast"
BODY = json.dumps({"jobType": JOB_TYPE, "metadata": {"prompt": "a red fox in the snow"}}).encode()


@dataclass
class Config:
    name: str
    fair_use: bool


CONFIGS = [Config("off", False), Config("on", True)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-clients", type=int, default=4, help="the flooding user's connections (%(default)s)")
    parser.add_argument("--flood-seconds", type=float, default=3.0, help="how long the flood lasts (%(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="connections of the capacity run (%(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per capacity run (%(default)s)")
    parser.add_argument("--checkpoints", type=Path, default=Path(".ourvidz/bench-checkpoints"))
    parser.add_argument("--out", type=Path, default=Path("test-output"))
    parser.add_argument("--quick", action="store_true", help="a 1.5 s flood and 2 s capacity runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.flood_seconds, args.seconds = 1.5, 2.0
    return args


async def seed(database_url: str, users: list[uuid.UUID], balance: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany("insert into profiles (id, token_balance) values ($1, $2) on conflict do nothing",
                               [(u, balance) for u in users])
    finally:
        await conn.close()


async def flood(api: ApiProcess, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One user floods; ten others submit one job each a second in. Their wait, in jobs and in seconds."""
    import httpx

    from edge_api.auth import mint_token

    heavy, others = uuid.uuid4(), [uuid.uuid4() for _ in range(OTHERS)]
    await seed(database_url, [heavy, *others], 10**9)
    codes: dict[int, int] = {}
    stop = time.monotonic() + args.flood_seconds
    host = f"127.0.0.1:{api.port}"
    request = _http_request("POST", "/api/queue-job", host, mint_token(JWT_SECRET, heavy), BODY)

    async def flooder() -> None:
        connection = await HttpConnection.open("127.0.0.1", api.port)
        try:
            while time.monotonic() < stop:
                status, _ = await connection.call(request)
                codes[status] = codes.get(status, 0) + 1
        finally:
            await connection.close()

    async def other(user: uuid.UUID, client: httpx.AsyncClient) -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {mint_token(JWT_SECRET, user)}"}
        answer = await client.post("/api/queue-job", content=BODY, headers={**auth, "Content-Type": "application/json"})
        answer.raise_for_status()
        job_id = answer.json()["job"]["id"]
        view = (await client.get(f"/api/jobs/{job_id}", headers=auth)).json()
        return {"id": job_id, "ahead": (view["queue_position"] or 1) - 1}

    async with httpx.AsyncClient(base_url=api.url, timeout=30.0) as client:
        flooding = [asyncio.create_task(flooder()) for _ in range(args.flood_clients)]
        await asyncio.sleep(min(1.0, args.flood_seconds / 2))
        theirs = await asyncio.gather(*(other(u, client) for u in others))
        await asyncio.gather(*flooding)
        async with Conductor(api.url, mint_token(JWT_SECRET, heavy), database_url) as conductor:
            waits = []
            for job in theirs:
                row = await conductor.wait_done(job["id"], timeout=3600)
                waits.append((row["started_at"] - row["created_at"]).total_seconds())
            heavy_jobs = await conductor.db.fetchval("select count(*) from jobs where user_id = $1", heavy)
            # The flood's leftovers are canceled (refunded): the next configuration starts from an empty queue.
            await conductor.db.execute("update jobs set status = 'canceled', completed_at = now() "
                                       "where status = 'queued'")
    ahead = [j["ahead"] for j in theirs]
    return {"heavy_accepted": heavy_jobs, "heavy_refused": sum(n for c, n in codes.items() if c == 429),
            "others_ahead_p50": percentile(ahead, 50), "others_ahead_max": max(ahead),
            "others_wait_p50_s": percentile(waits, 50), "others_wait_max_s": max(waits)}


async def capacity(api: ApiProcess, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Submits by many users, each well under the caps and rate limits, then reads: requests/s and p99."""
    from edge_api.auth import mint_token

    users = [uuid.uuid4() for _ in range(4000)]
    await seed(database_url, users, 10**6)
    tokens = [mint_token(JWT_SECRET, u) for u in users]
    host = f"127.0.0.1:{api.port}"
    submitted: list[tuple[str, str]] = []
    next_user = itertools.count()

    async def open_submitter(index: int) -> tuple[Any, Any]:
        connection = await HttpConnection.open("127.0.0.1", api.port)

        async def call(n: int) -> tuple[bool, str]:
            token = tokens[next(next_user) % len(tokens)]
            status, body = await connection.call(_http_request("POST", "/api/queue-job", host, token, BODY))
            if status == 200:
                submitted.append((json.loads(body)["job"]["id"], token))
            return status == 200, f"HTTP {status}"

        return call, connection.close

    async def open_reader(index: int) -> tuple[Any, Any]:
        connection = await HttpConnection.open("127.0.0.1", api.port)

        async def call(n: int) -> tuple[bool, str]:
            job_id, token = submitted[(index * 7919 + n) % len(submitted)]
            status, _ = await connection.call(_http_request("GET", f"/api/jobs/{job_id}", host, token))
            return status == 200, f"HTTP {status}"

        return call, connection.close

    submits = await run_closed_loop(args.clients, 0.5, args.seconds, 10**9, open_submitter)
    reads = await run_closed_loop(args.clients, 0.5, args.seconds, 10**9, open_reader)
    return {"submit_rps": submits["rps"], "submit_p99_ms": submits["p99_ms"], "submit_errors": submits["errors"],
            "read_rps": reads["rps"], "read_p99_ms": reads["p99_ms"], "read_errors": reads["errors"]}


def run_config(config: Config, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    with running_servers() as servers, tempfile.TemporaryDirectory(prefix="ourvidz-bench-fair-") as scratch:
        folder = Path(scratch)
        api = ApiProcess(api_env(servers, jwt_secret=JWT_SECRET, callback_secret=CALLBACK_SECRET,
                                 storage_dir=folder / "storage", fair_use=config.fair_use,
                                 extra={"OURVIDZ_CATALOG_OVERRIDES": json.dumps(overrides)}),
                         log_path=args.out / f"fairness-bench-api-{config.name}.log")
        api.start()
        worker_id = f"bench-{uuid.uuid4().hex[:8]}"
        worker = WorkerProcess({
            "OURVIDZ_WORKER_ID": worker_id, "OURVIDZ_REDIS_URL": servers.redis_url, "OURVIDZ_API_URL": api.url,
            "OURVIDZ_CALLBACK_SECRET": CALLBACK_SECRET, "OURVIDZ_STORAGE": "local",
            "OURVIDZ_STORAGE_DIR": str(folder / "storage"), "OURVIDZ_CHECKPOINTS_DIR": str(args.checkpoints),
            "OURVIDZ_WORK_DIR": str(folder / "work"), "OURVIDZ_DEVICE": "cpu",
            "OURVIDZ_CATALOG_OVERRIDES": json.dumps(overrides), "OURVIDZ_QUEUES": "sdxl",
        }, args.out)
        worker.start()
        try:
            async def both() -> dict[str, Any]:
                async with Conductor(api.url, "", servers.database_url) as conductor:
                    await conductor.wait_for_worker(servers.redis_url, worker_id, worker, 600)
                figures = await flood(api, servers.database_url, args)
                worker.stop()  # the capacity run measures the API alone
                return figures | await capacity(api, servers.database_url, args)

            return asyncio.run(both())
        finally:
            worker.stop()
            api.stop()


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    off, on = results["off"], results["on"]
    rows = [
        ["the flooding user's jobs accepted", off["heavy_accepted"], on["heavy_accepted"], ""],
        ["its submits refused (429)", off["heavy_refused"], on["heavy_refused"], ""],
        ["others' jobs ahead, p50", off["others_ahead_p50"], on["others_ahead_p50"],
         _ratio(on["others_ahead_p50"], off["others_ahead_p50"])],
        ["others' jobs ahead, max", off["others_ahead_max"], on["others_ahead_max"],
         _ratio(on["others_ahead_max"], off["others_ahead_max"])],
        ["others' wait to start, p50 (s)", off["others_wait_p50_s"], on["others_wait_p50_s"],
         _ratio(on["others_wait_p50_s"], off["others_wait_p50_s"])],
        ["others' wait to start, max (s)", off["others_wait_max_s"], on["others_wait_max_s"],
         _ratio(on["others_wait_max_s"], off["others_wait_max_s"])],
        [f"submits/s, {args.clients} clients", off["submit_rps"], on["submit_rps"],
         _ratio(on["submit_rps"], off["submit_rps"])],
        ["submit p99 (ms)", off["submit_p99_ms"], on["submit_p99_ms"],
         _ratio(on["submit_p99_ms"], off["submit_p99_ms"])],
        [f"job reads/s, {args.clients} clients", off["read_rps"], on["read_rps"],
         _ratio(on["read_rps"], off["read_rps"])],
        ["job read p99 (ms)", off["read_p99_ms"], on["read_p99_ms"], _ratio(on["read_p99_ms"], off["read_p99_ms"])],
    ]
    return markdown_table(["", "limits off", "limits on", "on / off"], rows)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def main(argv: list[str] | None = None) -> int:
    from models.checkpoints import build_all

    args = parse_args(argv)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}")
    print(f"command: {command_line()}")
    args.out.mkdir(parents=True, exist_ok=True)
    build_all(args.checkpoints, "tiny")
    overrides = small_catalog(2, (64, 64), (64, 48))
    results = {}
    for config in CONFIGS:
        print(f"limits {config.name} ...", flush=True)
        results[config.name] = run_config(config, args, overrides)
        print(f"  {json.dumps(results[config.name], default=str)}", flush=True)
    for config in CONFIGS:
        errors = {**results[config.name]["submit_errors"], **results[config.name]["read_errors"]}
        if errors:
            print(f"limits {config.name}: refused in the capacity run: {errors}")
    print()
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
