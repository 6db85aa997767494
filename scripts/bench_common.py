"""What the bench scripts share: throwaway Postgres/Redis servers, the API in its own uvicorn process,
per-process CPU accounting, percentiles and Markdown tables.

Not a library of the project: `scripts/bench_*.py` import it as a sibling module.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# tests/servers.py starts Postgres and Redis from the installed binaries; the benches reuse it as is.
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from servers import PostgresServer, RedisServer, free_port, wait_for_port  # noqa: E402

__all__ = ["REPO", "ApiProcess", "CpuMeter", "Servers", "api_env", "command_line", "free_port", "machine",
           "markdown_table", "percentile",
           "running_servers", "summarize_latencies", "wait_for_port"]

PYTHON = sys.executable


# --- the machine ------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """The CPU model (from lscpu), the cores this process may use, and the software that matters."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {"cpu": model, "cores": str(cores), "python": platform.python_version(), "os": platform.platform()}


def command_line() -> str:
    """How this run was started, for the docs."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


# --- numbers and tables -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_latencies(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else float("nan"), "mean_ms": sum(ms) / len(ms) if ms else float("nan")}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


# --- CPU time per process ---------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_seconds(pid: int, children_too: bool = False) -> float:
    """utime + stime of a process (and of its reaped children), from /proc; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" that ends the command name: field 3 is index 0, so utime (14) is index 11.
    ticks = int(fields[11]) + int(fields[12])
    if children_too:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """CPU seconds used by named groups of processes between `start()` and `stop()`."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    tree: set[str] = field(default_factory=set)  # groups whose first pid's children count too (Postgres backends)
    _before: dict[str, float] = field(default_factory=dict)

    def _read(self, name: str) -> float:
        pids = list(self.groups[name])
        if name in self.tree and pids:
            pids = [pids[0], *_children(pids[0])]
            # the postmaster's reaped children (backends that exited) are in its cutime/cstime
            return _proc_cpu_seconds(pids[0], children_too=True) + sum(_proc_cpu_seconds(p) for p in pids[1:])
        return sum(_proc_cpu_seconds(p) for p in pids)

    def start(self) -> None:
        self._before = {name: self._read(name) for name in self.groups}

    def stop(self) -> dict[str, float]:
        return {name: max(self._read(name) - self._before.get(name, 0.0), 0.0) for name in self.groups}


# --- Postgres and Redis -----------------------------------------------------------------------------------------


@dataclass
class Servers:
    postgres: PostgresServer
    redis: RedisServer

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def postmaster_pid(self) -> int:
        return int((self.postgres.data / "postmaster.pid").read_text().split()[0])

    @property
    def redis_pid(self) -> int:
        assert self.redis.process is not None
        return self.redis.process.pid


@contextlib.contextmanager
def running_servers() -> Iterator[Servers]:
    """Postgres (migrated) and Redis on free loopback ports, in a temporary folder removed afterwards.

    Postgres runs with tests/servers.py's settings: fsync and synchronous_commit off, so commits cost no
    disk flush. The API and the floor run against the same servers, so the ratios are fair; absolute
    figures against a durable Postgres would be lower.
    """
    import asyncio

    from jobs.migrations import apply_migrations

    root = Path(tempfile.mkdtemp(prefix="ourvidz-bench-"))
    root.chmod(0o755)  # as root, Postgres runs as `postgres`, which must reach its folder inside this one
    postgres = PostgresServer(root / "pg")
    redis = RedisServer(root / "redis")
    try:
        postgres.start()
        redis.start()
        asyncio.run(apply_migrations(postgres.url))
        yield Servers(postgres, redis)
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- the API in its own process ---------------------------------------------------------------------------------


class ApiProcess:
    """`uvicorn edge_api.app:create_app --factory` in a subprocess: one worker process, uvloop and httptools
    when installed (uvicorn's `auto`), configured through the environment like a deployment."""

    def __init__(self, env: dict[str, str], *, pythonpath: str | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._pythonpath = pythonpath
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, **self._env}
        if self._pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self._pythonpath, env.get("PYTHONPATH")]))
        log = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [PYTHON, "-m", "uvicorn", "edge_api.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            # `python -m` puts its working directory first on sys.path: a scratch copy must be that directory.
            env=env, cwd=self._pythonpath or str(REPO), stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API process exited with code {self.process.returncode}"
                                   + (f"; see {self._log_path}" if self._log_path else ""))
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the API did not become ready within {timeout} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


LIMITS_OFF = {"OURVIDZ_USER_ACTIVE_JOBS": "{}", "OURVIDZ_RATE_LIMIT_SUBMITS": "0", "OURVIDZ_RATE_LIMIT_REQUESTS": "0",
              "OURVIDZ_RATE_LIMIT_ANONYMOUS": "0", "OURVIDZ_FAIR_LOOKAHEAD": "0"}


def api_env(servers: Servers, *, jwt_secret: str, callback_secret: str, storage_dir: Path,
            extra: dict[str, str] | None = None, fair_use: bool = False) -> dict[str, str]:
    """The API's settings for a bench: Postgres + Redis, no sweeper, a queue that never fills, and no fair-use
    limits or fair order unless `fair_use` (bench_fairness.py measures what they cost)."""
    env = {
        "OURVIDZ_ENVIRONMENT": "development",
        "OURVIDZ_DATABASE_URL": servers.database_url,
        "OURVIDZ_REDIS_URL": servers.redis_url,
        "OURVIDZ_JWT_SECRET": jwt_secret,
        "OURVIDZ_CALLBACK_SECRET": callback_secret,
        "OURVIDZ_MAX_QUEUE_DEPTH": str(10**9),
        "OURVIDZ_SWEEPER_ENABLED": "false",
        "OURVIDZ_STORAGE": "local",
        "OURVIDZ_STORAGE_DIR": str(storage_dir),
        "OURVIDZ_FILES_SECRET": "bench-files-secret",
        **({} if fair_use else LIMITS_OFF),
    }
    env.update(extra or {})
    return env
