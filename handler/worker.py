"""The pull worker's parent process (asyncio): claims messages reliably and runs each through the job lifecycle.

`claim` moves a message into this worker's processing list; `handler.lifecycle` runs the job; as soon as
the GPU is free the next message is claimed, while the previous job's files are encoded and uploaded.
The message leaves the processing list only once its job is settled (`QueueSource.settle`), or goes back
to the front of its queue when the job is handed back. A heartbeat keeps the processing list ours; on
SIGTERM the worker stops claiming, lets the running jobs finish within the grace period, then hands
them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pydantic import ValidationError

from handler.callbacks import CallbackClient
from handler.child import ChildProcess
from handler.lifecycle import JobLifecycle, WorkerStats
from handler.model_process import ModelProcess, ModelState
from handler.settings import WorkerSettings
from handler.uploader import Uploader
from jobs.cancel import cancel_and_wait
from jobs.catalog import queue_of
from jobs.legacy_messages import read_message
from jobs.queue import Queue, QueueUnavailable, job_id_of

log = logging.getLogger(__name__)


class QueueSource:
    """Messages from the queue: settled by removing them from our processing list, given back to its front."""

    def __init__(self, queue: Queue, worker_id: str) -> None:
        self.queue = queue
        self.worker_id = worker_id

    async def settle(self, payload: str) -> None:
        try:
            await self.queue.ack(self.worker_id, payload)
        except QueueUnavailable as exc:
            log.warning("worker %s: ack failed (%s); the sweeper will tidy the message", self.worker_id, exc)

    async def give_back(self, payload: str) -> None:
        """Put a message back at the front of its queue, then take it out of our processing list."""
        try:
            message = read_message(payload)
        except ValidationError:
            await self.settle(payload)
            return
        try:
            await self.queue.push_front(queue_of(message.type), payload)
            await self.queue.ack(self.worker_id, payload)
        except QueueUnavailable as exc:
            # It stays in our processing list: `_return_strays` gives it back (or the sweeper, if we stop).
            log.error("job %s: could not give the message back: %s", message.id, exc)


class Worker:
    def __init__(self, settings: WorkerSettings, queue: Queue, child: ChildProcess, callbacks: CallbackClient,
                 uploader: Uploader) -> None:
        self.settings = settings
        self.queue = queue
        self.child = child
        self.models = ModelProcess(child)
        self.lifecycle = JobLifecycle(settings, self.models, callbacks, uploader)
        self.source = QueueSource(queue, settings.worker_id)
        # Messages that a task of this worker works on, from the claim until the task ends.
        self._owned: set[str] = set()
        # Messages in our processing list that no task owned at the last check (see `_return_strays`).
        self._strays: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.models.on_change(self._stop_if_unavailable)

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def stats(self) -> WorkerStats:
        stats = self.lifecycle.stats
        stats.child_restarts = self.models.restarts
        stats.load_seconds = self.models.load_seconds
        return stats

    def request_stop(self) -> None:
        """SIGTERM: claim nothing more; the running job finishes within the grace period or is handed back."""
        log.info("worker %s: stopping", self.worker_id)
        self._stopping.set()

    def _stop_if_unavailable(self) -> None:
        if self.models.state is ModelState.UNAVAILABLE:
            log.error("worker %s: the models cannot be loaded (%s); stopping", self.worker_id,
                      self.models.unavailable_reason)
            self._stopping.set()

    async def run(self, burst: bool = False) -> WorkerStats:
        """Serve jobs until stopped; `burst` returns once the queues are empty and nothing runs."""
        load_seconds = await self.models.start()
        log.info("worker %s: models loaded in %.1f s; serving %s", self.worker_id, load_seconds,
                 ",".join(self.settings.queues))
        background = [asyncio.create_task(self._heartbeat(), name="heartbeat")]
        try:
            await self._claim_loop(burst)
            await self._drain()
        finally:
            for task in background:
                await cancel_and_wait(task)
            with contextlib.suppress(QueueUnavailable):
                await self.queue.retire(self.worker_id)
            await self.models.stop(timeout=10.0)
        return self.stats

    async def _claim_loop(self, burst: bool) -> None:
        while not self._stopping.is_set():
            await self._wait_for(self.lifecycle.gpu_free)
            if self._stopping.is_set():
                return
            try:
                payload = await self.queue.claim(self.settings.queues, self.worker_id,
                                                 self.settings.claim_timeout_seconds)
            except QueueUnavailable as exc:
                log.warning("worker %s: queue unavailable: %s", self.worker_id, exc)
                await self._sleep_unless_stopping(1.0)
                continue
            if payload is None:
                if burst and not self._tasks:
                    return
                continue
            self.lifecycle.gpu_free.clear()  # until the job's claim says whether it runs
            self._owned.add(payload)
            task = asyncio.create_task(self._process(payload), name=f"job-{job_id_of(payload)}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for(self, event: asyncio.Event) -> None:
        stop = asyncio.create_task(self._stopping.wait())
        ready = asyncio.create_task(event.wait())
        await asyncio.wait({stop, ready}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        ready.cancel()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _process(self, payload: str) -> None:
        try:
            result = await self.lifecycle.run(payload, self.source)
        finally:
            self._owned.discard(payload)
        if result.stop_worker:
            self._stopping.set()

    async def _drain(self) -> None:
        """The grace period for running jobs; then each is stopped and handed back by its own task."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace_seconds)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _heartbeat(self) -> None:
        ttl = self.settings.heartbeat_ttl_seconds
        while True:
            try:
                await self.queue.heartbeat(self.worker_id, self.settings.queues, ttl)
                if not self._stopping.is_set():  # once stopped, the retired list is the sweeper's
                    await self._return_strays()
            except QueueUnavailable as exc:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, exc)
            await asyncio.sleep(ttl / 3)

    async def _return_strays(self) -> None:
        """Give back the messages in our processing list that no task of ours works on.

        A failed ack or hand-back, or a claim whose callback never got through, leaves one there; while
        we heartbeat, the sweeper counts it as held and never pushes its job again. A message is a stray
        only if it was one at the previous check too: a claim moves it into the list a moment before the
        claim loop takes ownership of it.
        """
        held = set(await self.queue.held(self.worker_id)) - self._owned - set(self.queue.stashed(self.worker_id))
        confirmed, self._strays = held & self._strays, held
        for payload in confirmed:
            log.warning("job %s: its message sat in our processing list with nobody on it; giving it back",
                        job_id_of(payload))
            await self.source.give_back(payload)
            self._strays.discard(payload)
            self.lifecycle.stats.returned += 1
