"""The worker's own costs, with tiny random-weight models on the CPU: claim latency, overhead outside generation,
and whether a stream of jobs runs at the generation rate.

Real parts end to end: Postgres and Redis on free loopback ports, the API (`uvicorn edge_api.app:create_app`)
and the worker (`handler.main.run_worker`), each in its own process; this process only submits over HTTP and
reads the job rows. The catalog is shrunk (say so when quoting figures): every type 2 steps, SDXL 64x64 (still
6 images), Wan 64x48 with the real frame counts (1, 81 or 97 frames at 16 fps); `--steps/--sdxl-size/--wan-size`
change that.

Measured per job type (each job submitted while the worker is idle and waiting on the queue; the first of
each type is a warm-up and is dropped):
- claim latency: `jobs.created_at` (the API accepts the job) to `jobs.started_at` (the worker's `processing`
  callback claimed it); the floor in the same run is Redis alone (LPUSH to a blocked BLMOVE), and the
  existing ourvidz workers poll every 2-5 s;
- overhead outside generation: `completed_at - created_at - generation_seconds` (the worker reports the
  generation seconds in the job's metadata): claim, hand-over to the model process, encode, upload, callbacks;
  as a share of the reference's job time for that type (catalog `reference_seconds`);
- a stream of jobs of one type submitted at once: jobs/s against 1 / generation seconds (encode and upload of
  job N overlap the generation of job N+1);
- encoding at the catalog's real output sizes (6 PNG 1024x1024; 81 and 97 frames of 480x832 H.264).

    .venv/bin/python scripts/bench_worker.py            # ~4 minutes
    .venv/bin/python scripts/bench_worker.py --quick    # ~1.5 minutes: 4 job types, 3 jobs each
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    REPO,
    ApiProcess,
    CpuMeter,
    api_env,
    command_line,
    machine,
    markdown_table,
    percentile,
    running_servers,
)

JWT_SECRET = "bench-jwt-secret-that-is-long-enough-for-hs256"
CALLBACK_SECRET = "bench-callback-secret"
PROMPT = "a red fox running through fresh snow at golden hour"
QUICK_TYPES = ["sdxl_image_fast", "image_fast", "video_fast", "video7b_fast_enhanced"]
TARGET_CLAIM_P50_MS = 20.0
REFERENCE_POLL_SECONDS = (2.0, 5.0)  # the existing ourvidz workers sleep this long between empty RPOPs


# --- the worker process -------------------------------------------------------------------------------------------


def worker_main(stats_path: Path) -> None:
    """`handler.main.run_worker` with settings from the environment, until SIGTERM; its stats go to a file."""
    import logging

    from handler.main import run_worker
    from handler.settings import WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    stats = asyncio.run(run_worker(WorkerSettings()))
    stats_path.write_text(json.dumps({"completed": stats.completed, "failed": stats.failed,
                                      "handed_back": stats.handed_back, "child_restarts": stats.child_restarts,
                                      "load_seconds": stats.load_seconds}))


class WorkerProcess:
    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.stats_path = folder / "worker-stats.json"
        self.log_path = folder / "worker.log"
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, __file__, "--worker-process", str(self.stats_path)],
                                            env={**os.environ, **self._env}, cwd=str(REPO), stdout=log,
                                            stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> dict[str, Any]:
        if self.process is None:
            return {}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.stats_path.read_text()))
        return {}


# --- the conductor ------------------------------------------------------------------------------------------------


def small_catalog(steps: int, sdxl_size: tuple[int, int], wan_size: tuple[int, int]) -> dict[str, dict[str, int]]:
    from jobs.catalog import DEFAULT_CATALOG, Family

    overrides: dict[str, dict[str, int]] = {"*": {"steps": steps}}
    for spec in DEFAULT_CATALOG.values():
        width, height = sdxl_size if spec.family is Family.SDXL else wan_size
        overrides[spec.job_type] = {"width": width, "height": height}
    return overrides


async def redis_pickup_floor(redis_url: str, samples: int) -> list[float]:
    """LPUSH from one connection to a BLMOVE blocked on another: the least a Redis-queue claim can take."""
    import redis.asyncio as aioredis

    consumer = aioredis.Redis.from_url(redis_url)
    producer = aioredis.Redis.from_url(redis_url)
    queue, target = f"bench:floor:{uuid.uuid4().hex}", f"bench:floor-processing:{uuid.uuid4().hex}"
    seconds = []
    try:
        for _ in range(samples):
            waiter: asyncio.Future[Any] = asyncio.ensure_future(consumer.blmove(queue, target, 5, "RIGHT", "LEFT"))
            await asyncio.sleep(0.002)  # the consumer is blocked before the push, as an idle worker is
            pushed = time.perf_counter()
            await producer.lpush(queue, "x")
            await waiter
            seconds.append(time.perf_counter() - pushed)
        await producer.delete(queue, target)
    finally:
        await consumer.aclose()
        await producer.aclose()
    return seconds


class Conductor:
    def __init__(self, api_url: str, token: str, database_url: str) -> None:
        self.api_url = api_url
        self.token = token
        self.database_url = database_url

    async def __aenter__(self) -> Conductor:
        import asyncpg
        import httpx

        self.http = httpx.AsyncClient(base_url=self.api_url, timeout=30.0,
                                      headers={"Authorization": f"Bearer {self.token}"})
        self.db = await asyncpg.connect(self.database_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.db.close()

    async def submit(self, job_type: str, n: int) -> str:
        response = await self.http.post("/api/queue-job", json={"jobType": job_type,
                                                                "metadata": {"prompt": f"{PROMPT} {n}", "seed": n}})
        if response.status_code != 200:
            raise RuntimeError(f"submit of {job_type} refused: {response.status_code} {response.text[:300]}")
        job_id: str = response.json()["job"]["id"]
        return job_id

    async def wait_done(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            row = await self.db.fetchrow(
                "select status, created_at, enqueued_at, started_at, completed_at, error_message, attempts, "
                "(metadata->>'generation_seconds')::float as generation_seconds from jobs where id = $1",
                uuid.UUID(job_id))
            if row is not None and row["status"] in ("completed", "failed", "canceled"):
                return dict(row)
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {row['status'] if row else 'missing'} after {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def wait_for_worker(self, redis_url: str, worker_id: str, worker: WorkerProcess, timeout: float) -> float:
        """Seconds until the worker's heartbeat key appears (its models are loaded and it claims)."""
        import redis.asyncio as aioredis

        from jobs import keys

        client = aioredis.Redis.from_url(redis_url)
        started = time.monotonic()
        try:
            while not await client.exists(keys.heartbeat(worker_id)):
                if worker.process is not None and worker.process.poll() is not None:
                    raise RuntimeError(f"the worker exited with code {worker.process.returncode}; "
                                       f"see {worker.log_path}")
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"the worker was not ready after {timeout:.0f} s; see {worker.log_path}")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        return time.monotonic() - started


def _ms(a: Any, b: Any) -> float:
    return (b - a).total_seconds() * 1000


async def run_sequential(conductor: Conductor, job_type: str, jobs: int, timeout: float) -> list[dict[str, Any]]:
    """Jobs one at a time, each submitted at a random moment while the worker idles on the queue."""
    rows = []
    for n in range(jobs + 1):
        await asyncio.sleep(random.uniform(0.05, 0.15))
        job_id = await conductor.submit(job_type, n)
        row = await conductor.wait_done(job_id, timeout)
        if row["status"] != "completed":
            raise RuntimeError(f"{job_type} job {job_id} {row['status']}: {row['error_message']}")
        if n > 0:  # the first of each type warms its pipeline (shapes, caches) up
            rows.append(row)
    return rows


async def run_stream(conductor: Conductor, job_type: str, jobs: int, timeout: float) -> list[dict[str, Any]]:
    ids = [await conductor.submit(job_type, 1000 + n) for n in range(jobs)]
    rows = [await conductor.wait_done(job_id, timeout) for job_id in ids]
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} stream jobs failed: {failed[0]['error_message']}")
    return rows


def encode_at_real_sizes() -> list[list[object]]:
    """The encoders the worker uses, on frames of the catalog's real sizes (smooth synthetic content)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from handler.encoder import encode_mp4, encode_png
    from jobs.catalog import DEFAULT_CATALOG

    rng = np.random.default_rng(0)

    def frames(count: int, height: int, width: int) -> np.ndarray:
        y = np.linspace(0, 255, height, dtype=np.float32)[None, :, None, None]
        x = np.linspace(0, 255, width, dtype=np.float32)[None, None, :, None]
        t = np.arange(count, dtype=np.float32)[:, None, None, None] * 3
        base = (y * 0.6 + x * 0.4 + t) % 256 + np.array([0, 40, 80], dtype=np.float32)
        noise = rng.normal(0, 6, size=(1, height, width, 3)).astype(np.float32)
        return np.clip(base + noise, 0, 255).astype(np.uint8)

    rows: list[list[object]] = []
    sdxl = DEFAULT_CATALOG["sdxl_image_fast"]
    images = list(frames(sdxl.num_outputs, sdxl.height, sdxl.width))
    with ThreadPoolExecutor(max_workers=2) as pool:  # the runner's encoding pool has 2 threads
        started = time.perf_counter()
        sizes = [len(b) for b in pool.map(encode_png, images)]
        seconds = time.perf_counter() - started
    rows.append([f"{sdxl.num_outputs} PNG {sdxl.width}x{sdxl.height} (2 threads)", seconds * 1000,
                 sum(sizes) / 1e6, sdxl.job_type, 100 * seconds / sdxl.reference_seconds])
    for job_type in ("video_fast", "video_high"):
        spec = DEFAULT_CATALOG[job_type]
        video = frames(spec.frames, spec.height, spec.width)
        started = time.perf_counter()
        data = encode_mp4(video, spec.fps)
        seconds = time.perf_counter() - started
        rows.append([f"MP4 {spec.frames} x {spec.width}x{spec.height} at {spec.fps} fps", seconds * 1000,
                     len(data) / 1e6, job_type, 100 * seconds / spec.reference_seconds])
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring (and docs/benchmarks.md) for what is measured.")
    parser.add_argument("--job-types", default="all", help="comma-separated job types, or all (%(default)s)")
    parser.add_argument("--jobs", type=int, default=6, help="measured jobs per type, after one warm-up (%(default)s)")
    parser.add_argument("--stream-type", default="video_fast", help="job type of the stream (%(default)s)")
    parser.add_argument("--stream-jobs", type=int, default=8, help="jobs in the stream (%(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of every type (%(default)s)")
    parser.add_argument("--sdxl-size", default="64x64", help="SDXL width x height (%(default)s)")
    parser.add_argument("--wan-size", default="64x48", help="Wan width x height, multiples of 16 (%(default)s)")
    parser.add_argument("--floor-samples", type=int, default=200, help="Redis LPUSH->BLMOVE samples (%(default)s)")
    parser.add_argument("--worker-queues", default="sdxl,wan",
                        help="queues the worker serves; one queue blocks on one list (%(default)s)")
    parser.add_argument("--skip-real-encode", action="store_true", help="skip encoding at the real output sizes")
    parser.add_argument("--checkpoints", type=Path, default=REPO / ".ourvidz" / "bench" / "checkpoints-tiny",
                        help="tiny checkpoints, built there if missing (%(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / ".ourvidz" / "bench",
                        help="where logs and JSON results go (%(default)s)")
    parser.add_argument("--job-timeout", type=float, default=300.0, help="seconds before a job counts as stuck")
    parser.add_argument("--quick", action="store_true",
                        help=f"about 1.5 minutes: {', '.join(QUICK_TYPES)}; 3 jobs each; a stream of 4")
    parser.add_argument("--worker-process", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from jobs.catalog import DEFAULT_CATALOG

    if args.quick:
        args.jobs = min(args.jobs, 3)
        args.stream_jobs = min(args.stream_jobs, 4)
        args.floor_samples = min(args.floor_samples, 100)
        if args.job_types == "all":
            args.job_types = ",".join(QUICK_TYPES)
    args.job_types = list(DEFAULT_CATALOG) if args.job_types == "all" else [
        t.strip() for t in args.job_types.split(",") if t.strip()]
    unknown = [t for t in [*args.job_types, args.stream_type] if t not in DEFAULT_CATALOG]
    if unknown:
        parser.error(f"unknown job types {unknown}; choose from {list(DEFAULT_CATALOG)}")
    try:
        args.sdxl_size = tuple(int(v) for v in args.sdxl_size.lower().split("x"))
        args.wan_size = tuple(int(v) for v in args.wan_size.lower().split("x"))
    except ValueError:
        parser.error("sizes are WIDTHxHEIGHT, e.g. 64x48")
    if args.jobs < 1 or args.stream_jobs < 2:
        parser.error("--jobs must be >= 1 and --stream-jobs >= 2")
    return args


def run(args: argparse.Namespace) -> int:
    from edge_api.auth import mint_token
    from models.checkpoints import build_all

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}")
    print(f"command: {command_line()}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_all(args.checkpoints, "tiny")
    print(f"tiny checkpoints in {args.checkpoints} ({time.perf_counter() - started:.1f} s)")
    overrides = small_catalog(args.steps, args.sdxl_size, args.wan_size)
    print(f"catalog overrides: every type {args.steps} steps; SDXL {args.sdxl_size[0]}x{args.sdxl_size[1]}, "
          f"Wan {args.wan_size[0]}x{args.wan_size[1]}; real frame counts, fps and image counts")
    user = uuid.uuid4()
    worker_id = f"bench-{uuid.uuid4().hex[:8]}"
    with running_servers() as servers, tempfile.TemporaryDirectory(prefix="ourvidz-bench-worker-") as scratch:
        folder = Path(scratch)
        storage = folder / "storage"
        asyncio.run(_seed(servers.database_url, user))
        api = ApiProcess(api_env(servers, jwt_secret=JWT_SECRET, callback_secret=CALLBACK_SECRET,
                                 storage_dir=storage, extra={"OURVIDZ_CATALOG_OVERRIDES": json.dumps(overrides)}),
                         log_path=args.out / "worker-bench-api.log")
        api.start()
        worker = WorkerProcess({
            "OURVIDZ_WORKER_ID": worker_id, "OURVIDZ_REDIS_URL": servers.redis_url, "OURVIDZ_API_URL": api.url,
            "OURVIDZ_CALLBACK_SECRET": CALLBACK_SECRET, "OURVIDZ_STORAGE": "local",
            "OURVIDZ_STORAGE_DIR": str(storage), "OURVIDZ_CHECKPOINTS_DIR": str(args.checkpoints),
            "OURVIDZ_WORK_DIR": str(folder / "work"), "OURVIDZ_DEVICE": "cpu",
            "OURVIDZ_CATALOG_OVERRIDES": json.dumps(overrides), "OURVIDZ_QUEUES": args.worker_queues,
        }, args.out)
        try:
            results = asyncio.run(conduct(args, servers.redis_url, servers.database_url, api, worker, worker_id,
                                          mint_token(JWT_SECRET, user)))
        finally:
            stats = worker.stop()
            api.stop()
    results["worker_stats"] = stats
    if not args.skip_real_encode:
        print("encoding at the catalog's real sizes ...", flush=True)
        results["real_encode"] = encode_at_real_sizes()
    return report(args, info, results)


async def _seed(database_url: str, user: uuid.UUID) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("insert into profiles (id, token_balance) values ($1, $2)", user, 10**9)
    finally:
        await conn.close()


async def conduct(args: argparse.Namespace, redis_url: str, database_url: str, api: ApiProcess,
                  worker: WorkerProcess, worker_id: str, token: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    floor = await redis_pickup_floor(redis_url, args.floor_samples)
    results["floor_ms"] = [s * 1000 for s in floor]
    worker.start()
    async with Conductor(api.url, token, database_url) as conductor:
        results["ready_seconds"] = await conductor.wait_for_worker(redis_url, worker_id, worker, 600)
        print(f"worker ready in {results['ready_seconds']:.1f} s (spawn, imports, model load)", flush=True)
        meter = CpuMeter(groups={"api": [api.pid], "worker parent": [worker.pid]})
        per_type: dict[str, list[dict[str, Any]]] = {}
        cpu: dict[str, dict[str, float]] = {}
        for job_type in args.job_types:
            meter.start()
            per_type[job_type] = await run_sequential(conductor, job_type, args.jobs, args.job_timeout)
            cpu[job_type] = meter.stop()
            rows = per_type[job_type]
            claims = [_ms(r["created_at"], r["started_at"]) for r in rows]
            print(f"  {job_type:<24} claim p50 {percentile(claims, 50):6.1f} ms; generation "
                  f"{sum(r['generation_seconds'] for r in rows) / len(rows):6.2f} s", flush=True)
        results["per_type"] = per_type
        results["cpu"] = cpu
        print(f"stream: {args.stream_jobs} x {args.stream_type} submitted at once ...", flush=True)
        results["stream"] = await run_stream(conductor, args.stream_type, args.stream_jobs, args.job_timeout)
    return results


def report(args: argparse.Namespace, info: dict[str, str], results: dict[str, Any]) -> int:
    from jobs.catalog import DEFAULT_CATALOG

    floor = results["floor_ms"]
    floor_p50 = percentile(floor, 50)
    print()
    print(f"## Worker bench ({info['cpu']}, {info['cores']} cores; tiny models on the CPU; {args.jobs} jobs per "
          f"type after one warm-up)")
    print()
    print("Claim latency and overhead outside generation, per job type (ms unless said):")
    rows = []
    all_claims: list[float] = []
    for job_type, jobs in results["per_type"].items():
        spec = DEFAULT_CATALOG[job_type]
        claims = [_ms(r["created_at"], r["started_at"]) for r in jobs]
        all_claims += claims
        generation = [r["generation_seconds"] * 1000 for r in jobs]
        total = [_ms(r["created_at"], r["completed_at"]) for r in jobs]
        overhead = [t - g for t, g in zip(total, generation, strict=True)]
        after = [o - c for o, c in zip(overhead, claims, strict=True)]
        mean_overhead = sum(overhead) / len(overhead)
        cpu = results["cpu"][job_type]
        accept = [_ms(r["created_at"], r["enqueued_at"]) for r in jobs if r["enqueued_at"] is not None]
        rows.append([job_type, percentile(accept, 50), percentile(claims, 50), percentile(claims, 99),
                     sum(generation) / len(generation),
                     percentile(after, 50), percentile(overhead, 50), percentile(overhead, 99),
                     spec.reference_seconds, 100 * mean_overhead / 1000 / spec.reference_seconds,
                     1000 * cpu["worker parent"] / len(jobs), 1000 * cpu["api"] / len(jobs)])
    print(markdown_table(["job type", "API push p50", "claim p50", "claim p99", "generation",
                          "after claim, outside generation p50",
                          "overhead p50", "overhead p99", "reference s", "overhead % of reference",
                          "worker parent CPU ms/job (idle loop too)", "API CPU ms/job"], rows))
    print()
    claim_p50 = percentile(all_claims, 50)
    poll_mean = sum(REFERENCE_POLL_SECONDS) / 2 / 2 * 1000  # half a sleep on average, sleeps of 2-5 s
    print("Claim latency against its floor and the existing workers (all types together):")
    print(markdown_table(
        ["", "p50 ms", "p99 ms", "claim p50 / this"],
        [["claim (created_at -> started_at)", claim_p50, percentile(all_claims, 99), 1.0],
         ["floor: Redis LPUSH -> blocked BLMOVE, same run", floor_p50, percentile(floor, 99), claim_p50 / floor_p50],
         ["existing workers: RPOP then sleep 2-5 s (expected, not measured)", poll_mean, float("nan"),
          claim_p50 / poll_mean]]))
    print(f"target claim p50 < {TARGET_CLAIM_P50_MS:.0f} ms: {claim_p50:.1f} ms -> "
          f"{'PASS' if claim_p50 < TARGET_CLAIM_P50_MS else 'FAIL'}")
    print()
    stream = sorted(results["stream"], key=lambda r: r["completed_at"])
    generation = sum(r["generation_seconds"] for r in stream) / len(stream)
    span = (stream[-1]["completed_at"] - stream[0]["completed_at"]).total_seconds()
    rate = (len(stream) - 1) / span if span > 0 else float("nan")
    after = [(_ms(r["started_at"], r["completed_at"]) / 1000 - r["generation_seconds"]) for r in stream]
    post = sum(after) / len(after)
    by_start = sorted(stream, key=lambda r: r["started_at"])
    overlaps = sum(1 for a, b in itertools.pairwise(by_start) if b["started_at"] < a["completed_at"])
    serial_rate = 1 / (generation + post)
    print(f"Stream: {len(stream)} x {args.stream_type} submitted at once (rate from the first to the last completion):")
    print(markdown_table(
        ["", "jobs/s", "stream / this"],
        [["stream, measured", rate, 1.0],
         ["generation rate: 1 / generation seconds", 1 / generation, rate * generation],
         ["no overlap: 1 / (generation + work after it)", serial_rate, rate / serial_rate]]))
    # Between two claims the model process generates job n, then waits while job n+1 is claimed: that wait
    # is started(n+1) - started(n) - generation(n), and is all the time per job that overlap cannot hide.
    idle = [(_ms(a["started_at"], b["started_at"]) - a["generation_seconds"] * 1000)
            for a, b in itertools.pairwise(by_start)]
    print(f"per job: generation {generation * 1000:.0f} ms; after the claim and outside generation (hand-over, "
          f"encode, upload, callbacks) {post * 1000:.0f} ms; the model process idle between two jobs "
          f"(started[n+1] - started[n] - generation[n]) p50 {percentile(idle, 50):.0f} ms, max {max(idle):.0f} ms; "
          f"{overlaps} of {len(stream) - 1} jobs were claimed before the previous one completed")
    if results.get("real_encode"):
        print()
        print("Encoding at the catalog's real output sizes (what the tiny sizes above leave out):")
        print(markdown_table(["what", "ms", "MB", "job type", "% of reference job time"], results["real_encode"]))
    stats = results.get("worker_stats") or {}
    print()
    print(f"worker: ready {results['ready_seconds']:.1f} s after start; model load {stats.get('load_seconds')} s; "
          f"completed {stats.get('completed')}, failed {stats.get('failed')}, handed back {stats.get('handed_back')}; "
          f"log {args.out / 'worker.log'}")
    out = args.out / "bench_worker.json"
    out.write_text(json.dumps({"machine": info, "command": command_line(), **results}, indent=1, default=str))
    print(f"raw results: {out}")
    return 0 if stats.get("failed", 0) == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker_process is not None:
        worker_main(args.worker_process)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
