"""The embedded mode: one command, no servers. SQLite, the jobs table as the queue, a local storage folder,
and a worker child process with tiny random-weight models on the CPU, all under one data folder.

`ourvidz up` runs the API in this process and supervises the worker as a child process; a restart
keeps every job, asset and balance, and finishes the jobs that were in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge_api.settings import ApiSettings
from jobs.webhooks import new_secret

log = logging.getLogger(__name__)

STARTING_CREDITS = 100


@dataclass(frozen=True, slots=True)
class Secrets:
    jwt_secret: str
    callback_secret: str
    files_secret: str
    user_id: str


@dataclass(frozen=True, slots=True)
class DataDir:
    """Everything the embedded instance keeps, in one folder (`./.ourvidz` by default)."""

    root: Path

    @property
    def database_url(self) -> str:
        return f"sqlite:///{(self.root / 'ourvidz.db').resolve()}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def secrets(self) -> Secrets:
        """The instance's secrets, generated on first use and kept (mode 0600)."""
        path = self.root / "secrets.json"
        if path.exists():
            return Secrets(**json.loads(path.read_text()))
        self.root.mkdir(parents=True, exist_ok=True)
        created = Secrets(jwt_secret=secrets.token_urlsafe(48), callback_secret=new_secret(),
                          files_secret=secrets.token_urlsafe(32), user_id=str(uuid.uuid4()))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(created), handle, indent=2)
        return created


def api_settings(data: DataDir, public_base_url: str = "") -> ApiSettings:
    keys = data.secrets()
    return ApiSettings(
        environment="development", database_url=data.database_url, redis_url=None, jwt_secret=keys.jwt_secret,
        callback_secret=keys.callback_secret, storage="local", storage_dir=data.storage,
        files_secret=keys.files_secret, public_base_url=public_base_url, starting_credits=STARTING_CREDITS,
        sweep_interval_seconds=2.0, outbox_grace_seconds=2.0,
    )


def worker_environment(data: DataDir, api_url: str) -> dict[str, str]:
    keys = data.secrets()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OURVIDZ_")}
    env.update({
        "OURVIDZ_DATABASE_URL": data.database_url, "OURVIDZ_API_URL": api_url,
        "OURVIDZ_CALLBACK_SECRET": keys.callback_secret, "OURVIDZ_STORAGE": "local",
        "OURVIDZ_STORAGE_DIR": str(data.storage.resolve()), "OURVIDZ_CHECKPOINTS_DIR": str(data.checkpoints.resolve()),
        "OURVIDZ_BUILD_CHECKPOINTS": "tiny", "OURVIDZ_DEVICE": "cpu", "OURVIDZ_WORK_DIR": str(data.work.resolve()),
        "OURVIDZ_QUEUES": "sdxl_queue,wan_queue", "OURVIDZ_WORKER_ID": f"embedded-{uuid.uuid4().hex[:8]}",
        # Ctrl-C should stop quickly: a job still running after this is handed back and resumed next time.
        "OURVIDZ_SHUTDOWN_GRACE_SECONDS": os.environ.get("OURVIDZ_SHUTDOWN_GRACE_SECONDS", "3"),
    })
    return env


async def recover_after_restart(settings: ApiSettings) -> int:
    """Jobs held by the previous run's worker go back to the queue now, not after its heartbeat expires."""
    from edge_api.state import open_state

    state = await open_state(settings)
    try:
        workers = await state.queue.live_workers()
        for worker_id in workers:
            await state.queue.retire(worker_id)
        await state.sweeper.sweep()
        return len(workers)
    finally:
        await state.aclose()


class WorkerSupervisor:
    """Keeps one worker process running beside the API; restarts it if it dies, stops it on shutdown."""

    def __init__(self, data: DataDir, api_url: str, log_file: Path) -> None:
        self._data = data
        self._api_url = api_url
        self._log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.restarts = 0

    async def run(self) -> None:
        while not self._stopping:
            with self._log_file.open("ab") as sink:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ourvidz", "worker", "--queues", "sdxl,wan",
                    env=worker_environment(self._data, self._api_url), stdout=sink, stderr=sink,
                    cwd=Path(__file__).resolve().parent.parent)
                code = await self._process.wait()
            if code in (130, -signal.SIGINT):
                return  # Ctrl-C reached the worker too: the whole instance is stopping
            if not self._stopping:
                self.restarts += 1
                log.warning("the worker exited with code %s; restarting it (see %s)", code, self._log_file)
                await asyncio.sleep(1.0)

    async def stop(self, grace: float = 30.0) -> None:
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def build_checkpoints(data: DataDir) -> None:
    """Tiny random-weight models in the real layouts, built on first run (seconds), reused afterwards."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from models.checkpoints import build_enhancer, build_sdxl, build_wan, is_complete

    steps = [("SDXL", build_sdxl, data.checkpoints / "sdxl"), ("Wan 2.1", build_wan, data.checkpoints / "wan"),
             ("Qwen enhancer", build_enhancer, data.checkpoints / "qwen")]
    todo = [step for step in steps if not is_complete(step[2], "tiny")]
    if not todo:
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("Building tiny random-weight models (first run only)", total=len(todo))
        for name, build, out in todo:
            progress.update(task, description=f"Building the tiny {name} model")
            build(out, "tiny")
            progress.advance(task)


async def run_up(host: str, port: int, data_root: Path) -> None:
    import uvicorn
    from rich.console import Console

    from edge_api.app import create_app
    from edge_api.auth import mint_token

    console = Console()
    data = DataDir(data_root)
    keys = data.secrets()
    await asyncio.to_thread(build_checkpoints, data)
    base_url = f"http://{host}:{port}"
    settings = api_settings(data)
    recovered = await recover_after_restart(settings)
    if recovered:
        console.print(f"Resuming the jobs of the previous run ({recovered} worker(s) stopped).")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    supervisor = WorkerSupervisor(data, base_url, data.root / "worker.log")
    worker_task = asyncio.create_task(supervisor.run())
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn offers no event)
        await asyncio.sleep(0.05)
    if serving.done():
        await supervisor.stop()
        worker_task.cancel()
        serving.result()
        return
    token = mint_token(keys.jwt_secret, uuid.UUID(keys.user_id), ttl=30 * 86400)
    console.print(f"\n[bold green]ourvidz is up[/] at {base_url}/ — open this link to use it as yourself:")
    console.print(f"{base_url}/#token={token}", soft_wrap=True, highlight=False)
    console.print(f"\nToken for the API (user {keys.user_id}, {STARTING_CREDITS} credits to start):")
    console.print(token, soft_wrap=True, highlight=False)
    console.print(f"Data in {data.root.resolve()}; the worker logs to {data.root / 'worker.log'}. Ctrl-C stops.")
    try:
        await serving
    finally:
        console.print("Stopping the worker…")
        await supervisor.stop()
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
