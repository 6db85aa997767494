"""The worker's child process, which owns torch: the parent sends jobs down a pipe, events come back.

The child is `spawn`ed (never forked: CUDA does not survive a fork), loads its models once, and runs
one generation at a time while the previous job's files are still being encoded. If it dies — CUDA
OOM, a segfault, a kill — the parent sees the pipe close, deals with the job, and starts a new one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import traceback
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, cast

from handler.errors import GenerationStopped
from handler.events import (
    ChildEvent,
    ChildFailed,
    ChildReady,
    Finished,
    JobFailed,
    JobStopped,
    RunJob,
    Shutdown,
    StopJob,
)
from handler.runner import JobRunner, ModelPaths
from jobs.messages import QueueMessage

log = logging.getLogger(__name__)


class ChildDied(Exception):
    """The child process ended while the parent waited for it."""


def child_main(conn: Connection, paths: ModelPaths, queues: list[str], device: str, build: str = "never",
               checkpoints_dir: Path | None = None) -> None:
    """The child's whole life: load, then serve `RunJob`s until `Shutdown` or the pipe closes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s child %(levelname)s %(name)s: %(message)s")
    # Ctrl-C in a terminal, or a SIGTERM sent to the whole process group, reaches the child too; the
    # parent decides when it stops (a running job may finish within the grace period), and ends it with
    # `Shutdown` or SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    send_lock = threading.Lock()

    def emit(event: ChildEvent) -> None:
        with send_lock:  # encoding threads and the main thread both report
            conn.send(event)

    try:
        if build != "never" and checkpoints_dir is not None:
            from models.checkpoints import build_all

            # Random weights in the real layouts, built once (the embedded mode and the tests).
            build_all(checkpoints_dir, cast(Literal["tiny", "full"], build))
        runner = JobRunner(paths, queues, device)
    except Exception as exc:  # any load failure is reported, then the child ends
        emit(ChildFailed(f"{type(exc).__name__}: {exc}"))
        return
    emit(ChildReady(runner.load_seconds))
    inbox = _Inbox(conn)
    threading.Thread(target=inbox.read, name="commands", daemon=True).start()
    try:
        while True:
            command = inbox.jobs.get()
            if command is None:
                break
            if not _run_one(runner, command, emit, inbox):
                break  # out of memory: a fresh process is the only sure way back to a clean device
    finally:
        runner.close()


class _Inbox:
    """The parent's commands, read on a thread of their own so that a `StopJob` lands mid-generation."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.jobs: queue.SimpleQueue[RunJob | None] = queue.SimpleQueue()
        self._stops: set[str] = set()
        self._lock = threading.Lock()

    def read(self) -> None:
        while True:
            try:
                command = self._conn.recv()
            except (EOFError, OSError):
                command = Shutdown()
            if isinstance(command, StopJob):
                with self._lock:
                    self._stops.add(command.job_id)
            elif isinstance(command, RunJob):
                self.jobs.put(command)
            elif isinstance(command, Shutdown):
                self.jobs.put(None)
                return

    def stop_asked(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._stops

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._stops.discard(job_id)


def _run_one(runner: JobRunner, command: RunJob, emit: Any, inbox: _Inbox) -> bool:
    """Run one job; False when the process must end (the device ran out of memory)."""
    message = QueueMessage.model_validate_json(command.message_json)
    job_id = message.id
    try:
        if inbox.stop_asked(job_id):
            raise GenerationStopped("stopped before it started")
        future = runner.run(message, Path(command.work_dir), emit, lambda: inbox.stop_asked(job_id))
    except GenerationStopped:
        log.info("job %s: generation stopped", job_id)
        emit(JobStopped(job_id))
        return True
    except Exception as exc:  # a failed generation fails this job, not the child
        out_of_memory = _is_out_of_memory(exc)
        log.warning("job %s: generation failed: %s", job_id, traceback.format_exc(limit=3))
        emit(JobFailed(job_id, f"generation failed: {type(exc).__name__}: {exc}",
                       kind="out_of_memory" if out_of_memory else "generation"))
        return not out_of_memory
    finally:
        inbox.forget(job_id)

    def report(done: Future[Any]) -> None:
        try:
            files, metadata = done.result()
        except Exception as exc:  # an encoding failure fails this job
            emit(JobFailed(job_id, f"encoding failed: {type(exc).__name__}: {exc}", kind="encoding"))
            return
        emit(Finished(job_id, files, metadata))

    future.add_done_callback(report)
    return True


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch's `OutOfMemoryError` (CUDA, and MPS's "out of memory" RuntimeError), named without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class ChildProcess:
    """The parent's handle: start, send jobs, and receive events as an asyncio stream."""

    def __init__(self, paths: ModelPaths, queues: list[str], device: str, build: str = "never",
                 checkpoints_dir: Path | None = None) -> None:
        self._args = (paths, queues, device, build, checkpoints_dir)
        self._events: asyncio.Queue[ChildEvent | None] = asyncio.Queue()
        self.process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None

    def spawn(self) -> None:
        """Start the process; it loads its models meanwhile (`ready` waits for them)."""
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe()
        self.process = context.Process(target=child_main, args=(child_conn, *self._args), daemon=True,
                                       name="ourvidz-child")
        self.process.start()
        # multiprocessing's own exit handler SIGTERMs daemonic children and then joins them; ours ignores
        # SIGTERM (a group SIGTERM is the worker's to act on), so an interpreter that ends without `stop`
        # (an exception out of the worker, a test that timed out) would wait for it forever. Ours runs
        # first (atexit is last in, first out) and kills it.
        atexit.register(self._kill_at_exit)
        child_conn.close()
        self._conn = parent_conn
        self._reader = None

    async def ready(self) -> ChildReady:
        """Listen on the running loop and wait until the models are loaded (the pipe keeps what came before)."""
        assert self._conn is not None, "spawn() first"
        self._events = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read, args=(self._conn, loop, self._events), daemon=True)
        self._reader.start()
        first = await self.next_event()
        if isinstance(first, ChildFailed):
            raise RuntimeError(f"the model process failed to start: {first.error}")
        if not isinstance(first, ChildReady):
            raise RuntimeError(f"unexpected first event from the model process: {first!r}")
        return first

    async def start(self) -> ChildReady:
        self.spawn()
        return await self.ready()

    @property
    def spawned(self) -> bool:
        return self.process is not None

    @staticmethod
    def _read(conn: Connection, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[ChildEvent | None]) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                event = None
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the parent's loop is closed: nobody is listening any more
                return
            if event is None:
                return

    async def next_event(self) -> ChildEvent:
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)  # every later reader learns it too
            raise ChildDied(f"the model process exited with code {self.exitcode}")
        return event

    @property
    def exitcode(self) -> int | None:
        if self.process is None:
            return None
        self.process.join(timeout=1)
        return self.process.exitcode

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def run(self, message_json: str, work_dir: Path) -> None:
        assert self._conn is not None
        try:
            self._conn.send(RunJob(message_json, str(work_dir)))
        except (OSError, ValueError) as exc:
            raise ChildDied(f"cannot reach the model process: {exc}") from exc

    def stop_job(self, job_id: str) -> None:
        """Ask the running generation of `job_id` to end at its next step (it answers `JobStopped`)."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(StopJob(job_id))

    def _kill_at_exit(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    async def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        atexit.unregister(self._kill_at_exit)
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(Shutdown())
        await asyncio.to_thread(self.process.join, timeout)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, 5)
        if self._conn is not None:
            self._conn.close()
        self.process = None
