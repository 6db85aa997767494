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
import signal
import threading
import traceback
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, cast

from handler.events import ChildEvent, ChildFailed, ChildReady, Finished, JobFailed, RunJob, Shutdown
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
    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:
                break
            if isinstance(command, Shutdown):
                break
            if isinstance(command, RunJob):
                _run_one(runner, command, emit)
    finally:
        runner.close()


def _run_one(runner: JobRunner, command: RunJob, emit: Any) -> None:
    message = QueueMessage.model_validate_json(command.message_json)
    try:
        future = runner.run(message, Path(command.work_dir), emit)
    except Exception as exc:  # a failed generation fails this job, not the child
        log.warning("job %s: generation failed: %s", message.id, traceback.format_exc(limit=3))
        emit(JobFailed(message.id, f"generation failed: {type(exc).__name__}: {exc}"))
        return

    def report(done: Future[Any]) -> None:
        try:
            files, metadata = done.result()
        except Exception as exc:  # an encoding failure fails this job
            emit(JobFailed(message.id, f"encoding failed: {type(exc).__name__}: {exc}"))
            return
        emit(Finished(message.id, files, metadata))

    future.add_done_callback(report)


class ChildProcess:
    """The parent's handle: start, send jobs, and receive events as an asyncio stream."""

    def __init__(self, paths: ModelPaths, queues: list[str], device: str, build: str = "never",
                 checkpoints_dir: Path | None = None) -> None:
        self._args = (paths, queues, device, build, checkpoints_dir)
        self._events: asyncio.Queue[ChildEvent | None] = asyncio.Queue()
        self.process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None

    async def start(self) -> ChildReady:
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
        self._events = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read, args=(parent_conn, loop, self._events), daemon=True)
        self._reader.start()
        first = await self.next_event()
        if isinstance(first, ChildFailed):
            raise RuntimeError(f"the model process failed to start: {first.error}")
        if not isinstance(first, ChildReady):
            raise RuntimeError(f"unexpected first event from the model process: {first!r}")
        return first

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
