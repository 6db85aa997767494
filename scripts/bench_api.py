"""Load test of the HTTP API against its floor: `POST /api/queue-job` and `GET /api/jobs/{id}` at 1-256 clients.

Three kinds of process, so that none measures itself:
- this one (the conductor) starts Postgres and Redis on free loopback ports, applies the migrations, gives
  many users large balances, mints their HS256 tokens once, and reads every process's CPU time;
- the API: `uvicorn edge_api.app:create_app --factory`, one worker process, settings from the environment;
- the load generator (this script with `--loadgen`): raw asyncio HTTP/1.1 on keep-alive connections, one per
  client (uvloop when installed), closed loop, bounded in time and in count. It also runs the floor: the same
  work done directly with asyncpg and redis-py, no HTTP, at the same concurrencies:
    submit: BEGIN; UPDATE profiles ... WHERE token_balance >= price RETURNING; INSERT jobs; INSERT
            credit_ledger; COMMIT; LPUSH; UPDATE jobs SET enqueued_at
    get (queued job):    SELECT the row by id and owner + its queue position (one GROUP BY count), JSON
    get_done (finished): SELECT the row by id and owner + its asset rows, JSON

    .venv/bin/python scripts/bench_api.py             # ~3.5 minutes: 1/16/64/256 clients, profile at 64
    .venv/bin/python scripts/bench_api.py --quick     # ~1.5 minutes
    .venv/bin/python scripts/bench_api.py --help

With py-spy installed (`.venv/bin/pip install py-spy`), an extra 64-client submit phase runs under
`py-spy record --nonblocking` (its figures are not in the table) and the hot path's costs are printed by layer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    REPO,
    ApiProcess,
    CpuMeter,
    Servers,
    api_env,
    command_line,
    machine,
    markdown_table,
    running_servers,
    summarize_latencies,
)

JWT_SECRET = "bench-jwt-secret-that-is-long-enough-for-hs256"
CALLBACK_SECRET = "bench-callback-secret"
PROMPT = "a red fox running through fresh snow at golden hour, cinematic, shallow depth of field"
API_POOL = 20  # edge_api: 10 engine connections + 10 in the hot path's asyncpg pool (database_pool_size=10)
TARGET_SUBMITS_PER_S = 1000.0
TARGET_P99_MS = 50.0


# =================================================================================================================
# The load generator (a separate process; commands in on stdin, results out on stdout, one JSON per line)
# =================================================================================================================


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends pre-encoded requests: almost no client CPU per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def call(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if match is None:
            raise RuntimeError(f"a response without Content-Length: {head[:200]!r}")
        body = await self.reader.readexactly(int(match.group(1)))
        return status, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def _http_request(method: str, path: str, host: str, token: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {token}"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Call = Callable[[int], Awaitable[tuple[bool, str]]]  # (request number of this client) -> (ok, error label)


async def run_closed_loop(concurrency: int, warmup: float, duration: float, max_requests: int,
                          open_client: Callable[[int], Awaitable[tuple[Call, Callable[[], Awaitable[None]]]]],
                          ) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last one answered.

    Completions inside the window [start + warmup, start + warmup + duration] are counted (or the first
    `max_requests` of them); their latencies give the percentiles.
    """
    clients = [await open_client(i) for i in range(concurrency)]
    cpu_before = time.process_time()
    start = time.perf_counter()
    window_open = start + warmup
    window_close = window_open + duration
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    first_error: list[str] = []
    stopped_at: list[float] = []

    async def client(call: Call) -> None:
        n = 0
        while True:
            sent = time.perf_counter()
            if sent >= window_close or stopped_at:
                return
            try:
                ok, label = await call(n)
            except Exception as exc:  # a broken connection ends this client; it is counted, not hidden
                errors[f"{type(exc).__name__}"] += 1
                first_error.append(f"{type(exc).__name__}: {exc}")
                return
            n += 1
            done = time.perf_counter()
            if window_open <= done <= window_close and not stopped_at:
                if ok:
                    latencies.append(done - sent)
                else:
                    errors[label] += 1
                    if not first_error:
                        first_error.append(label)
                if len(latencies) >= max_requests:
                    stopped_at.append(done)

    await asyncio.gather(*(client(call) for call, _ in clients))
    for _, close in clients:
        await close()
    span = (stopped_at[0] if stopped_at else window_close) - window_open
    return {"ok": len(latencies), "errors": dict(errors), "first_error": first_error[0] if first_error else None,
            "seconds": span, "rps": len(latencies) / span if span > 0 else 0.0,
            "client_cpu_s": time.process_time() - cpu_before, **summarize_latencies(latencies)}


class LoadGenerator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.users: list[dict[str, str]] = config["users"]
        self.host = f"127.0.0.1:{config['port']}"
        self._pool: Any = None
        self._redis: Any = None

    def _user_of(self, client: int, n: int, concurrency: int) -> int:
        """Each client cycles through its own users: no two clients debit the same balance at once."""
        mine = range(client, len(self.users), concurrency) if len(self.users) >= concurrency else range(
            len(self.users))
        return mine[n % len(mine)]

    # --- HTTP --------------------------------------------------------------------------------------------------

    async def http_phase(self, cmd: dict[str, Any]) -> dict[str, Any]:
        concurrency = cmd["concurrency"]
        endpoint = cmd["endpoint"]
        port = self.config["port"]
        if endpoint == "submit":
            body = json.dumps({"jobType": self.config["job_type"], "metadata": {"prompt": PROMPT}}).encode()
            requests = [_http_request("POST", "/api/queue-job", self.host, u["token"], body) for u in self.users]
        elif endpoint == "healthz":
            requests = [f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()]
        else:
            targets = cmd["targets"]  # [[job_id, user_index], ...]
            requests = [_http_request("GET", f"/api/jobs/{job_id}", self.host, self.users[user]["token"])
                        for job_id, user in targets]

        async def open_client(index: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
            connection = await HttpConnection.open("127.0.0.1", port)

            async def call(n: int) -> tuple[bool, str]:
                if endpoint == "submit":
                    request = requests[self._user_of(index, n, concurrency)]
                else:
                    request = requests[(index + n * concurrency) % len(requests)]
                status, _ = await connection.call(request)
                return status == 200, f"HTTP {status}"

            return call, connection.close

        return await run_closed_loop(concurrency, cmd["warmup"], cmd["duration"], cmd["max_requests"], open_client)

    # --- the floor: the same work with asyncpg and redis-py directly --------------------------------------------

    async def _floor_resources(self) -> tuple[Any, Any]:
        if self._pool is None:
            import asyncpg
            import redis.asyncio as aioredis

            self._pool = await asyncpg.create_pool(self.config["database_url"], min_size=self.config["floor_pool"],
                                                   max_size=self.config["floor_pool"])
            self._redis = aioredis.Redis.from_url(self.config["redis_url"], decode_responses=True)
        return self._pool, self._redis

    async def floor_phase(self, cmd: dict[str, Any]) -> dict[str, Any]:
        pool, redis = await self._floor_resources()
        concurrency = cmd["concurrency"]
        endpoint = cmd["endpoint"]
        user_ids = [uuid.UUID(u["id"]) for u in self.users]
        job_type, price, queue = self.config["job_type"], self.config["price"], self.config["queue"]
        targets = [(uuid.UUID(job_id), user_ids[user]) for job_id, user in cmd.get("targets", [])]

        async def submit(user_id: uuid.UUID) -> tuple[bool, str]:
            job_id = uuid.uuid4()
            now = datetime.now(UTC)
            seed = int.from_bytes(os.urandom(4), "little")
            metadata = {"prompt": PROMPT, "credits": price, "bucket": job_type, "num_images": 6,
                        "job_type": job_type, "model_variant": "lustify_sdxl", "seed": seed}
            message = json.dumps({"id": str(job_id), "type": job_type, "prompt": PROMPT, "user_id": str(user_id),
                                  "created_at": now.isoformat(), "model_variant": "lustify_sdxl", "bucket": job_type,
                                  "config": {"size": "1024*1024", "sample_steps": 15, "seed": seed},
                                  "metadata": {"num_images": 6, "queue_timestamp": time.time(), "credits": price}})
            async with pool.acquire() as conn:
                async with conn.transaction():
                    balance = await conn.fetchval(
                        "update profiles set token_balance = token_balance - $2 "
                        "where id = $1 and token_balance >= $2 returning token_balance", user_id, price)
                    if balance is None:
                        return False, "insufficient credits"
                    await conn.execute(
                        "insert into jobs (id, user_id, job_type, format, quality, model_type, status, metadata, "
                        "attempts, max_attempts, created_at, queue, price, progress, updated_at) values "
                        "($1, $2, $3, 'image', 'fast', 'sdxl', 'queued', $4, 0, 3, $5, $6, $7, 0, $5)",
                        job_id, user_id, job_type, json.dumps(metadata), now, queue, price)
                    await conn.execute(
                        "insert into credit_ledger (user_id, job_id, kind, amount, created_at) "
                        "values ($1, $2, 'charge', $3, $4)", user_id, job_id, -price, now)
                await redis.lpush(queue, message)
                await conn.execute("update jobs set enqueued_at = now() where id = $1", job_id)
            return True, ""

        async def get_queued(job_id: uuid.UUID, user_id: uuid.UUID) -> tuple[bool, str]:
            async with pool.acquire() as conn:
                row = await conn.fetchrow("select * from jobs where id = $1 and user_id = $2", job_id, user_id)
                if row is None:
                    return False, "not found"
                ahead = await conn.fetch(
                    "select job_type, count(*) from jobs where queue = $1 and status = 'queued' and "
                    "(created_at < $2 or (created_at = $2 and id < $3)) group by job_type",
                    row["queue"], row["created_at"], row["id"])
            view = {**dict(row), "queue_position": 1 + sum(r[1] for r in ahead)}
            json.dumps(view, default=str)
            return True, ""

        async def get_done(job_id: uuid.UUID, user_id: uuid.UUID) -> tuple[bool, str]:
            async with pool.acquire() as conn:
                row = await conn.fetchrow("select * from jobs where id = $1 and user_id = $2", job_id, user_id)
                if row is None:
                    return False, "not found"
                assets = await conn.fetch("select * from assets where job_id = $1 order by position", job_id)
            json.dumps({**dict(row), "assets": [dict(a) for a in assets]}, default=str)
            return True, ""

        async def open_client(index: int) -> tuple[Call, Callable[[], Awaitable[None]]]:
            async def call(n: int) -> tuple[bool, str]:
                if endpoint == "submit":
                    return await submit(user_ids[self._user_of(index, n, concurrency)])
                job_id, user_id = targets[(index + n * concurrency) % len(targets)]
                return await (get_queued if endpoint == "get" else get_done)(job_id, user_id)

            async def close() -> None:
                return None

            return call, close

        return await run_closed_loop(concurrency, cmd["warmup"], cmd["duration"], cmd["max_requests"], open_client)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            await self._redis.aclose()


async def loadgen_main(config_path: Path) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    generator = LoadGenerator(json.loads(config_path.read_text()))
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return
            cmd = json.loads(line)
            try:
                result = await (generator.http_phase(cmd) if cmd["kind"] == "api" else generator.floor_phase(cmd))
            except Exception as exc:  # reported to the conductor, which stops the run
                result = {"fatal": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        await generator.aclose()


# =================================================================================================================
# The conductor
# =================================================================================================================


class LoadGenProcess:
    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        path = folder / "loadgen.json"
        path.write_text(json.dumps(config))
        self.process = subprocess.Popen([sys.executable, __file__, "--loadgen", str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=str(REPO))

    @property
    def pid(self) -> int:
        return self.process.pid

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited with code {self.process.wait()}")
        result: dict[str, Any] = json.loads(line)
        if "fatal" in result:
            raise RuntimeError(f"the load generator failed: {result['fatal']}")
        return result

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def seed_users(database_url: str, count: int, balance: int) -> list[uuid.UUID]:
    import asyncpg

    users = [uuid.uuid4() for _ in range(count)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table("profiles", records=[(u, balance) for u in users],
                                         columns=["id", "token_balance"])
    finally:
        await conn.close()
    return users


def pg_connections(servers: Servers) -> int:
    """Connections Postgres accepted so far (it logs each one: see `log_connections` in `run`)."""
    try:
        with open(servers.postgres.root / "log", "rb") as log:
            return sum(line.count(b"connection authorized") for line in log)
    except OSError:
        return 0


async def db_execute(database_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def prepare_reads(database_url: str, users: list[uuid.UUID], queued_depth: int, sample: int
                        ) -> tuple[list[list[Any]], list[list[Any]], int]:
    """Leave the newest `queued_depth` jobs queued (a queue as deep as the API lets it get by default) and
    finish the rest; returns GET targets among the queued ones and among the finished ones."""
    import asyncpg

    index = {u: i for i, u in enumerate(users)}
    conn = await asyncpg.connect(database_url)
    try:
        keep = await conn.fetch("select id from jobs where status = 'queued' order by created_at desc, id desc "
                                "limit $1", queued_depth)
        keep_ids = [r["id"] for r in keep]
        # Two steps: the status trigger allows queued -> processing -> completed, not queued -> completed.
        await conn.execute("update jobs set status = 'processing', attempts = 1, started_at = now() "
                           "where status = 'queued' and not (id = any($1::uuid[]))", keep_ids)
        await conn.execute("update jobs set status = 'completed', completed_at = now(), progress = 100 "
                           "where status = 'processing'")
        await conn.execute("vacuum analyze jobs")
        queued = await conn.fetch("select id, user_id from jobs where status = 'queued' order by random() limit $1",
                                  sample)
        done = await conn.fetch("select id, user_id from jobs where status = 'completed' order by random() limit $1",
                                sample)
        depth = int(await conn.fetchval("select count(*) from jobs where status = 'queued'"))
    finally:
        await conn.close()
    return ([[str(r["id"]), index[r["user_id"]]] for r in queued],
            [[str(r["id"]), index[r["user_id"]]] for r in done], depth)


async def check_ledger(database_url: str, balance: int) -> dict[str, int]:
    """The invariant after the run: every job is charged once, and the balances moved by exactly the charges."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        jobs = int(await conn.fetchval("select count(*) from jobs"))
        charges = int(await conn.fetchval("select count(*) from credit_ledger where kind = 'charge'"))
        charged = int(await conn.fetchval("select coalesce(-sum(amount), 0) from credit_ledger"))
        spent = int(await conn.fetchval("select coalesce(sum($1 - token_balance), 0) from profiles", balance))
        prices = int(await conn.fetchval("select coalesce(sum(price), 0) from jobs"))
    finally:
        await conn.close()
    return {"jobs": jobs, "charges": charges, "charged": charged, "spent": spent, "prices": prices}


# --- profiling ----------------------------------------------------------------------------------------------------

LAYERS: list[tuple[str, str]] = [
    # (substring of the frame's file path, layer); the first match wins
    ("/uvicorn/", "uvicorn + httptools (HTTP)"),
    ("/httptools/", "uvicorn + httptools (HTTP)"),
    ("/h11/", "uvicorn + httptools (HTTP)"),
    ("/starlette/middleware/base.py", "BaseHTTPMiddleware (app._observe)"),
    ("/starlette/", "Starlette (routing, middleware, responses)"),
    ("/anyio/", "anyio (middleware streams, threads)"),
    ("/fastapi/", "FastAPI (dependencies, params, serialization)"),
    ("/pydantic_core/", "pydantic"),
    ("/pydantic/", "pydantic"),
    ("/jwt/", "PyJWT + cryptography (JWT)"),
    ("/cryptography/", "PyJWT + cryptography (JWT)"),
    ("/sqlalchemy/", "SQLAlchemy (compile, execute, pool, result)"),
    ("/asyncpg/", "asyncpg"),
    ("/redis/", "redis-py"),
    ("/prometheus_client/", "prometheus_client (metrics)"),
    ("/json/", "json (stdlib)"),
    ("/orjson", "json (orjson)"),
    ("/uuid.py", "uuid"),
    ("/asyncio/", "asyncio / uvloop (event loop)"),
    ("/uvloop/", "asyncio / uvloop (event loop)"),
    ("/edge_api/", "ourvidz: edge_api"),
    ("/jobs/", "ourvidz: jobs"),
]

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


EVENT_LOOP = "event loop (uvloop's C code: I/O, callbacks)"
# Leaves where a thread sleeps: py-spy's --nonblocking mode cannot always tell idle threads from busy ones.
IDLE_LEAVES = ("Condition.wait", "Event.wait", "Queue.get", "Thread.join", "select", "poll")


def _layer(func: str, file: str) -> str:
    if func == "Runner.run" or func.endswith("run_until_complete"):
        return EVENT_LOOP  # uvloop runs the loop in C: the Python frame below it is the loop's entry
    path = "/" + file
    if "sqlalchemy" in path:
        return "SQLAlchemy (compile, execute, pool, result)"
    for needle, layer in LAYERS:
        if needle in path:
            return layer
    return "other (stdlib, site-packages)"


def analyze_profile(raw: Path, cpu_ms_per_request: float) -> str:
    """Self time by layer, inclusive time of the layers and of ourvidz's own functions, from py-spy's raw output."""
    self_by_layer: Counter[str] = Counter()
    incl_by_layer: Counter[str] = Counter()
    incl_by_func: Counter[str] = Counter()
    self_by_func: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for part in stack.split(";"):
            match = FRAME.match(part.strip())
            if match is not None:
                frames.append((match.group("func"), match.group("file")))
        if not frames:
            continue
        leaf_func, leaf_file = frames[-1]
        if leaf_func in IDLE_LEAVES and ("threading" in leaf_file or "queue" in leaf_file or "selectors" in leaf_file):
            idle += count
            continue
        total += count
        self_by_layer[_layer(leaf_func, leaf_file)] += count
        self_by_func[f"{leaf_func} ({_short(leaf_file)})"] += count
        for layer in {_layer(func, f) for func, f in frames}:
            incl_by_layer[layer] += count
        ours = {f"{func} ({_short(f)})" for func, f in frames if _layer(func, f).startswith("ourvidz")}
        for name in ours:
            incl_by_func[name] += count
    if total == 0:
        return "py-spy recorded no samples."

    def rows(counter: Counter[str], limit: int) -> list[list[object]]:
        return [[name, 100 * n / total, cpu_ms_per_request * 1000 * n / total]
                for name, n in counter.most_common(limit)]

    return "\n\n".join([
        f"{total} samples of the server's busy threads ({idle} samples of idle threads left out); "
        f"µs/request = share x the API process's CPU per request ({cpu_ms_per_request:.2f} ms, from the unprofiled "
        "phase at the same concurrency when there is one). SQLAlchemy runs its driver calls in greenlets, whose "
        "stacks py-spy shows without the route above them: the inclusive figures of ourvidz functions undercount "
        "the SQL they cause; the layer tables do not.",
        "Self time by layer (the frame that was running):",
        markdown_table(["layer", "% of samples", "µs/request"], rows(self_by_layer, 20)),
        "Inclusive time by layer (a layer anywhere on the stack; layers nest, so the column sums over 100 %):",
        markdown_table(["layer", "% of samples", "µs/request"], rows(incl_by_layer, 20)),
        "ourvidz functions, inclusive (what each step of the hot path costs with everything it calls):",
        markdown_table(["function", "% of samples", "µs/request"], rows(incl_by_func, 25)),
        "Hottest leaf functions:",
        markdown_table(["function", "% of samples", "µs/request"], rows(self_by_func, 15)),
    ])


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1].removeprefix(".")
    return path


def find_py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


# --- the run ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring (and docs/benchmarks.md) for what is measured.")
    parser.add_argument("--concurrency", default="1,16,64,256", help="client counts, comma-separated (%(default)s)")
    parser.add_argument("--endpoints", default="submit,get,get_done,healthz",
                        help="submit (POST /api/queue-job), get (GET /api/jobs/{id} of a queued job), get_done "
                             "(of a completed job), healthz (GET /healthz: the HTTP stack alone, no floor); "
                             "comma-separated (%(default)s)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per phase (%(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (%(default)s)")
    parser.add_argument("--max-requests", type=int, default=40_000, help="stop a phase after this many (%(default)s)")
    parser.add_argument("--users", type=int, default=1024, help="distinct users with tokens (%(default)s)")
    parser.add_argument("--job-type", default="sdxl_image_fast", help="the job type submitted (%(default)s)")
    parser.add_argument("--queued-depth", type=int, default=200,
                        help="queued jobs left for the GET phases: a queued job's view lists the jobs ahead of it "
                             "(%(default)s)")
    parser.add_argument("--floor-pool", type=int, default=API_POOL,
                        help="asyncpg connections of the floor; the API: 10 (engine) + 10 (hot path) (%(default)s)")
    parser.add_argument("--profile", choices=["auto", "on", "off"], default="auto",
                        help="py-spy the server during an extra submit phase: auto = if py-spy is installed")
    parser.add_argument("--profile-concurrency", type=int, default=64)
    parser.add_argument("--profile-endpoints", default="submit,get",
                        help="which endpoints get a profiled phase, comma-separated (%(default)s)")
    parser.add_argument("--profile-rate", type=int, default=20,
                        help="py-spy samples per second; at 100 py-spy slowed this server 3-5x on 2 cores, at 20 it "
                             "kept 80-100 %% of the throughput (%(default)s)")
    parser.add_argument("--profile-seconds", type=float, default=20.0,
                        help="length of the profiled phase; py-spy needs a second or two to attach (%(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / ".ourvidz" / "bench",
                        help="where the profile and JSON results go (%(default)s)")
    parser.add_argument("--server-pythonpath", default=None,
                        help="put this folder first on the API process's PYTHONPATH (to bench a scratch copy)")
    parser.add_argument("--quick", action="store_true",
                        help="about 1.5 minutes: 2 s phases, 0.5 s warm-up, 8 s profiles; submit, get and healthz")
    parser.add_argument("--loadgen", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)
        args.profile_seconds = min(args.profile_seconds, 8.0)
        if args.endpoints == parser.get_default("endpoints"):
            args.endpoints = "submit,get,healthz"
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.endpoints = [e.strip() for e in str(args.endpoints).split(",") if e.strip()]
    args.profile_endpoints = [e.strip() for e in str(args.profile_endpoints).split(",") if e.strip()]
    unknown = set(args.endpoints) - {"submit", "get", "get_done", "healthz"}
    if unknown:
        parser.error(f"unknown endpoints: {sorted(unknown)}")
    return args


def run(args: argparse.Namespace) -> int:
    from edge_api.auth import mint_token
    from jobs.catalog import DEFAULT_CATALOG

    spec = DEFAULT_CATALOG[args.job_type]
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}")
    print(f"command: {command_line()}")
    args.out.mkdir(parents=True, exist_ok=True)
    balance = 10**9
    results: list[dict[str, Any]] = []
    with running_servers() as servers, tempfile.TemporaryDirectory(prefix="ourvidz-bench-api-") as scratch:
        # Every new connection costs Postgres a fork and the client a handshake: count them per phase.
        asyncio.run(db_execute(servers.database_url, "alter system set log_connections = on",
                               "select pg_reload_conf()"))
        users = asyncio.run(seed_users(servers.database_url, max(args.users, 1), balance))
        tokens = [mint_token(JWT_SECRET, u) for u in users]
        api = ApiProcess(api_env(servers, jwt_secret=JWT_SECRET, callback_secret=CALLBACK_SECRET,
                                 storage_dir=Path(scratch) / "storage"),
                         pythonpath=args.server_pythonpath, log_path=args.out / "api-server.log")
        api.start()
        loadgen = LoadGenProcess({
            "port": api.port, "users": [{"id": str(u), "token": t} for u, t in zip(users, tokens, strict=True)],
            "database_url": servers.database_url, "redis_url": servers.redis_url, "job_type": spec.job_type,
            "price": spec.price, "queue": spec.queue, "floor_pool": args.floor_pool,
        }, Path(scratch))
        meter = CpuMeter(groups={"api": [api.pid], "postgres": [servers.postmaster_pid], "redis": [servers.redis_pid],
                                 "loadgen": [loadgen.pid]}, tree={"postgres"})
        try:
            results = conduct(args, servers, api, loadgen, meter, users, spec.queue)
        finally:
            loadgen.stop()
            api.stop()
        ledger = asyncio.run(check_ledger(servers.database_url, balance))
    return report(args, info, results, ledger)


def conduct(args: argparse.Namespace, servers: Servers, api: ApiProcess, loadgen: LoadGenProcess, meter: CpuMeter,
            users: list[uuid.UUID], queue: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    base = {"warmup": args.warmup, "duration": args.duration, "max_requests": args.max_requests}

    def phase(kind: str, endpoint: str, concurrency: int, **extra: Any) -> dict[str, Any]:
        connections = pg_connections(servers)
        meter.start()
        result = loadgen.run({**base, "kind": kind, "endpoint": endpoint, "concurrency": concurrency, **extra})
        cpu = meter.stop()
        result.update(kind=kind, endpoint=endpoint, concurrency=concurrency, cpu_s=cpu,
                      pg_connections=pg_connections(servers) - connections)
        print(f"  {endpoint:<8} {kind:<5} {concurrency:>4} clients: {result['rps']:8.0f} req/s  "
              f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms"
              + (f"  errors {result['errors']}" if result["errors"] else ""), flush=True)
        return result

    def tidy() -> None:
        """Between phases: no dead rows piling up in the hot tables, no queue growing without bound."""
        import redis

        asyncio.run(db_execute(servers.database_url, "vacuum analyze profiles", "vacuum analyze credit_ledger"))
        client = redis.Redis.from_url(servers.redis_url)
        client.delete("sdxl_queue", "wan_queue")
        client.close()

    if "submit" in args.endpoints:
        print("POST /api/queue-job vs the floor:", flush=True)
        for concurrency in args.concurrency:
            for kind in ("api", "floor"):
                results.append(phase(kind, "submit", concurrency))
                tidy()
    else:
        print("making jobs to read (not reported):", flush=True)
        phase("api", "submit", 64)
        tidy()
    profiles = []
    if args.profile != "off" and "submit" in args.profile_endpoints:
        profiles.append(run_profile(args, api, loadgen, meter, base, "submit"))
        tidy()
    reads = [e for e in ("get", "get_done") if e in args.endpoints]
    if reads:
        queued, done, depth = asyncio.run(prepare_reads(servers.database_url, users, args.queued_depth, 5000))
        print(f"GET /api/jobs/{{id}} vs the floor ({depth} jobs queued, {len(done)} finished sampled):", flush=True)
        for endpoint in reads:
            targets = queued if endpoint == "get" else done
            if not targets:
                print(f"  no {endpoint} targets; skipped")
                continue
            for concurrency in args.concurrency:
                for kind in ("api", "floor"):
                    results.append(phase(kind, endpoint, concurrency, targets=targets))
            if args.profile != "off" and endpoint in args.profile_endpoints:
                profiles.append(run_profile(args, api, loadgen, meter, base, endpoint, targets=targets))
    if "healthz" in args.endpoints:
        print("GET /healthz (the HTTP stack alone: uvicorn, middleware, FastAPI routing; no auth, no I/O):")
        for concurrency in args.concurrency:
            results.append(phase("api", "healthz", concurrency))
    return results + [p for p in profiles if p is not None]


def run_profile(args: argparse.Namespace, api: ApiProcess, loadgen: LoadGenProcess, meter: CpuMeter,
                base: dict[str, Any], endpoint: str, **extra: Any) -> dict[str, Any] | None:
    """One more phase of the API, under `py-spy record --nonblocking`; its figures stay out of the tables."""
    py_spy = find_py_spy()
    if py_spy is None:
        if args.profile == "on":
            raise SystemExit("--profile on: py-spy is not installed (.venv/bin/pip install py-spy)")
        print("profile: skipped (py-spy is not installed: .venv/bin/pip install py-spy)")
        return None
    raw = args.out / f"api-profile-{endpoint}.txt"
    profiled = {**base, "duration": max(args.profile_seconds, base["duration"]), "max_requests": 10**9}
    seconds = profiled["warmup"] + profiled["duration"]
    print(f"profile: py-spy on the API process during {args.profile_concurrency}-client {endpoint} ...", flush=True)
    spy = subprocess.Popen([py_spy, "record", "--pid", str(api.pid), "--nonblocking", "--rate",
                            str(args.profile_rate), "--duration", str(int(seconds) + 2), "--format", "raw",
                            "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # py-spy reads the target's symbols before it samples
    meter.start()
    result = loadgen.run({**profiled, "kind": "api", "endpoint": endpoint, "concurrency": args.profile_concurrency,
                          **extra})
    cpu = meter.stop()
    _, err = spy.communicate(timeout=120)
    if spy.returncode != 0 or not raw.exists():
        print(f"profile: py-spy failed ({spy.returncode}): {err.strip()[-500:]}")
        return None
    result.update(kind="profile", endpoint=endpoint, concurrency=args.profile_concurrency, cpu_s=cpu,
                  profile_file=str(raw))
    return result


def _per_request_ms(result: dict[str, Any], process: str) -> float:
    # CPU of the whole phase (warm-up included) over the requests of the phase, warm-up estimated at the same rate
    total = result["rps"] * (result["seconds"] + result.get("warmup", 0.0))
    return 1000 * result["cpu_s"].get(process, 0.0) / total if total else float("nan")


def report(args: argparse.Namespace, info: dict[str, str], results: list[dict[str, Any]],
           ledger: dict[str, int]) -> int:
    for result in results:
        result["warmup"] = args.warmup
    table = [r for r in results if r["kind"] in ("api", "floor")]
    by_key = {(r["endpoint"], r["kind"], r["concurrency"]): r for r in table}
    names = {"submit": "POST /api/queue-job", "get": "GET /api/jobs/{id} (queued)",
             "get_done": "GET /api/jobs/{id} (completed)", "healthz": "GET /healthz (HTTP stack alone)"}
    print()
    print(f"## API vs floor ({info['cpu']}, {info['cores']} cores; {args.duration:g} s per phase after "
          f"{args.warmup:g} s warm-up)")
    rows = []
    for endpoint in ("submit", "get", "get_done"):
        for concurrency in args.concurrency:
            api = by_key.get((endpoint, "api", concurrency))
            floor = by_key.get((endpoint, "floor", concurrency))
            if api is None or floor is None:
                continue
            errors = sum(api["errors"].values()) + sum(floor["errors"].values())
            rows.append([names[endpoint], concurrency, api["rps"], api["p50_ms"], api["p99_ms"], floor["rps"],
                         floor["p50_ms"], floor["p99_ms"], api["rps"] / floor["rps"] if floor["rps"] else float("nan"),
                         api["p99_ms"] / floor["p99_ms"] if floor["p99_ms"] else float("nan"), errors])
    print(markdown_table(["endpoint", "clients", "API req/s", "API p50 ms", "API p99 ms", "floor req/s",
                          "floor p50 ms", "floor p99 ms", "API/floor req/s", "API/floor p99", "errors"], rows))
    health = [[names["healthz"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], sum(r["errors"].values())]
              for r in table if r["endpoint"] == "healthz"]
    if health:
        print()
        print("The HTTP stack's own ceiling in this run (what any endpoint of this app can at most reach):")
        print(markdown_table(["endpoint", "clients", "req/s", "p50 ms", "p99 ms", "errors"], health))
    print()
    print("## CPU per request (ms of CPU time per completed request, per process)")
    cpu_rows = []
    for r in table:
        cpu_rows.append([names[r["endpoint"]], r["kind"], r["concurrency"], _per_request_ms(r, "api"),
                         _per_request_ms(r, "postgres"), _per_request_ms(r, "redis"), _per_request_ms(r, "loadgen"),
                         r.get("pg_connections", "–")])
    print(markdown_table(["endpoint", "run", "clients", "API process", "Postgres", "Redis", "load generator",
                          "new PG connections"], cpu_rows))
    print("(For the floor, the load generator's column is the floor's own Python work: the equivalent of the API "
          "process. New PG connections: what Postgres logged as authorized during the phase.)")
    failures = [r for r in table if r["errors"]]
    for r in failures:
        print(f"errors in {r['endpoint']} {r['kind']} at {r['concurrency']}: {r['errors']} (first: {r['first_error']})")
    print()
    print("## Targets")
    verdicts = []
    submit64 = by_key.get(("submit", "api", 64))
    floor64 = by_key.get(("submit", "floor", 64))
    if submit64 is not None:
        verdicts.append(["submits/s at 64 clients >= 1,000", f"{submit64['rps']:.0f}",
                         "PASS" if submit64["rps"] >= TARGET_SUBMITS_PER_S else "FAIL"])
    if submit64 is not None and floor64 is not None:
        ratio = submit64["rps"] / floor64["rps"]
        verdicts.append(["submits/s at 64 clients >= half the floor", f"{ratio:.2f} of {floor64['rps']:.0f}",
                         "PASS" if ratio >= 0.5 else "FAIL"])
    for endpoint in ("submit", "get", "get_done"):
        at16 = by_key.get((endpoint, "api", 16))
        if at16 is not None:
            verdicts.append([f"{names[endpoint]} p99 at 16 clients < 50 ms", f"{at16['p99_ms']:.1f} ms",
                             "PASS" if at16["p99_ms"] < TARGET_P99_MS else "FAIL"])
    print(markdown_table(["target", "measured", "verdict"], verdicts))
    print()
    consistent = ledger["charges"] == ledger["jobs"] and ledger["charged"] == ledger["spent"] == ledger["prices"]
    print(f"ledger check: {ledger['jobs']} jobs, {ledger['charges']} charges, {ledger['charged']} credits charged, "
          f"{ledger['spent']} spent from balances: {'consistent' if consistent else 'INCONSISTENT'}")
    for profile in (r for r in results if r["kind"] == "profile"):
        print()
        print(f"## Profile of the API process: {names[profile['endpoint']]}, {profile['concurrency']} clients, "
              f"under py-spy ({profile['rps']:.0f} req/s while sampled; raw stacks in {profile['profile_file']})")
        print()
        plain = by_key.get((profile["endpoint"], "api", profile["concurrency"]))
        print(analyze_profile(Path(profile["profile_file"]), _per_request_ms(plain or profile, "api")))
    (args.out / "bench_api.json").write_text(json.dumps({"machine": info, "command": command_line(),
                                                        "results": results, "ledger": ledger}, indent=1))
    print(f"\nraw results: {args.out / 'bench_api.json'}")
    return 1 if failures or not consistent else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen is not None:
        asyncio.run(loadgen_main(args.loadgen))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
