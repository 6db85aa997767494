"""The embedded mode: one command, no servers. SQLite, the jobs table as the queue, a local storage folder,
and a worker child process with tiny random-weight models on the CPU, all under one data folder.

`ourvidz up` runs the API in this process and supervises the worker as a child process; a restart
keeps every job, asset and balance, and finishes the jobs that were in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from rich.console import Console

from edge_api.settings import ApiSettings
from jobs.webhooks import new_secret
from ourvidz import terminal
from ourvidz.instance import (
    SECRETS_FILE,
    AlreadyRunning,
    InstanceLock,
    NoInstance,
    check_port,
    is_running,
    read_running,
)

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

    def secrets(self, create: bool = False) -> Secrets:
        """The instance's secrets (mode 0600); only `up` creates them (`create`), else NoInstance."""
        path = self.root / SECRETS_FILE
        if path.exists():
            return Secrets(**json.loads(path.read_text()))
        if not create:
            raise NoInstance(self.root)
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


def worker_environment(data: DataDir, api_url: str, worker_id: str) -> dict[str, str]:
    keys = data.secrets()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OURVIDZ_")}
    env.update({
        "OURVIDZ_DATABASE_URL": data.database_url, "OURVIDZ_API_URL": api_url,
        "OURVIDZ_CALLBACK_SECRET": keys.callback_secret, "OURVIDZ_STORAGE": "local",
        "OURVIDZ_STORAGE_DIR": str(data.storage.resolve()), "OURVIDZ_CHECKPOINTS_DIR": str(data.checkpoints.resolve()),
        "OURVIDZ_BUILD_CHECKPOINTS": "tiny", "OURVIDZ_DEVICE": "cpu", "OURVIDZ_WORK_DIR": str(data.work.resolve()),
        "OURVIDZ_QUEUES": "sdxl_queue,wan_queue", "OURVIDZ_WORKER_ID": worker_id,
        # Ctrl-C should stop quickly: a job still running after this is handed back and resumed next time.
        "OURVIDZ_SHUTDOWN_GRACE_SECONDS": os.environ.get("OURVIDZ_SHUTDOWN_GRACE_SECONDS", "3"),
    })
    return env


async def recover_after_restart(settings: ApiSettings, user_id: uuid.UUID, keep: str) -> tuple[int, int]:
    """Jobs held by the previous run's worker go back to the queue now, not after its heartbeat expires.

    Only an instance holding the folder's lock runs this: any worker registered but `keep` (this run's,
    already loading its models) is the previous run's. Returns how many workers were retired, and the
    instance user's balance.
    """
    from edge_api.state import open_state

    state = await open_state(settings)
    try:
        workers = [w for w in await state.queue.live_workers() if w != keep]
        for worker_id in workers:
            await state.queue.retire(worker_id)
        await state.sweeper.sweep()
        return len(workers), await state.store.balance(user_id, settings.starting_credits)
    finally:
        await state.aclose()


def _die_with_parent() -> None:
    """In the worker, before it runs: the kernel sends it SIGTERM if `up` dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerSupervisor:
    """Keeps one worker process running beside the API; restarts it if it dies, stops it on shutdown."""

    def __init__(self, data: DataDir, api_url: str, log_file: Path) -> None:
        self._data = data
        self._api_url = api_url
        self._log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.restarts = 0
        self.worker_id = self._new_id()

    @staticmethod
    def _new_id() -> str:
        return f"embedded-{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        while not self._stopping:
            with self._log_file.open("ab") as sink:
                # A session of its own: a terminal's Ctrl-C reaches `up` alone, which stops the worker
                # first (it hands its job back while the API still answers), then the API.
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ourvidz", "worker", "--queues", "sdxl,wan",
                    env=worker_environment(self._data, self._api_url, self.worker_id), stdout=sink, stderr=sink,
                    cwd=Path(__file__).resolve().parent.parent, start_new_session=True, preexec_fn=_die_with_parent)
                code = await self._process.wait()
            if not self._stopping:
                self.restarts += 1
                self.worker_id = self._new_id()
                log.warning("the worker exited with code %s; restarting it (see %s)", code, self._log_file)
                await asyncio.sleep(1.0)

    def kill(self) -> None:
        self._stopping = True
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

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
    """Tiny random-weight models in the real layouts, built on first run (seconds), reused afterwards.

    A later start only reads the folders' markers: torch and the model libraries are imported by the
    worker, not by `up`, so the worker starts sooner and `up` prints nothing of theirs."""
    from models.build_marker import is_complete

    names = {"sdxl": "SDXL", "wan": "Wan 2.1", "qwen": "Qwen enhancer"}
    todo = [folder for folder in names if not is_complete(data.checkpoints / folder, "tiny")]
    if not todo:
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # transformers warns at import that torchvision is missing (the Pillow image processors serve here).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from models.checkpoints import build_enhancer, build_sdxl, build_wan

    builders = {"sdxl": build_sdxl, "wan": build_wan, "qwen": build_enhancer}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    # transient: the spinner's line is gone once the models are built
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("Building tiny random-weight models (first run only)", total=len(todo))
        for folder in todo:
            progress.update(task, description=f"Building the tiny {names[folder]} model")
            builders[folder](data.checkpoints / folder, "tiny")
            progress.advance(task)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: `up` decides the order of the stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _claim_folder(data: DataDir, host: str, port: int) -> InstanceLock:
    """The folder's lock, taken only if no instance holds it and the port is free: else nothing changes."""
    if is_running(data.root):
        raise AlreadyRunning(data.root, read_running(data.root))
    check_port(host, port)
    lock = InstanceLock(data.root)
    lock.acquire()
    return lock


async def run_up(host: str, port: int, data_root: Path) -> None:
    """Raises AlreadyRunning or PortBusy before it changes anything."""
    data = DataDir(data_root)
    lock = _claim_folder(data, host, port)
    try:
        await _serve(data, lock, host, port)
    finally:
        lock.release()


async def _serve(data: DataDir, lock: InstanceLock, host: str, port: int) -> None:
    from edge_api.app import create_app
    from edge_api.auth import mint_token

    console = terminal.console()
    first_run = not (data.root / SECRETS_FILE).exists()
    keys = data.secrets(create=True)
    await asyncio.to_thread(build_checkpoints, data)
    base_url = f"http://{host}:{port}"
    settings = api_settings(data)
    supervisor = WorkerSupervisor(data, base_url, data.root / "worker.log")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: no more waiting; the next start resumes the job
            supervisor.kill()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # The worker first: loading its models takes the longest, and a job handed back at the last stop
    # runs as soon as they are in memory. Its callbacks wait (retried) until the API answers.
    worker_task = asyncio.create_task(supervisor.run())
    server = _Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    serving: asyncio.Task[None] | None = None
    try:
        recovered, balance = await recover_after_restart(settings, uuid.UUID(keys.user_id),
                                                         keep=supervisor.worker_id)
        if recovered:
            console.print("Resuming the jobs that were running when this instance last stopped.")
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.05)
        if not serving.done():
            lock.publish(base_url)
            token = mint_token(keys.jwt_secret, uuid.UUID(keys.user_id), ttl=30 * 86400)
            _banner(console, base_url, token, keys.user_id, balance, first_run, data)
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            console.print("Stopping: the worker hands its job back, then the API stops…")
    finally:
        await supervisor.stop()
        server.should_exit = True
        if serving is not None:
            await serving
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _banner(console: Console, base_url: str, token: str, user_id: str, balance: int, first_run: bool,
            data: DataDir) -> None:
    console.print(f"\n[bold green]ourvidz is up[/] at {base_url}/ — open this link to use it as yourself:")
    console.print(f"{base_url}/#token={token}", soft_wrap=True, highlight=False)
    credits = f"{balance} credits to start" if first_run else f"{balance} credits"
    console.print(f"\nToken for the API (user {user_id}, {credits}):")
    console.print(token, soft_wrap=True, highlight=False)
    console.print(f"Data in {data.root.resolve()}; the worker logs to {data.root / 'worker.log'}. Ctrl-C stops.")
