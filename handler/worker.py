"""The worker's parent process (asyncio): claims jobs reliably, feeds the torch child, uploads, calls back.

A job's life here: `claim` moves its message into this worker's processing list → a `processing`
callback claims it in the store and returns the attempt number (the fencing token) → the child
generates (progress callbacks, throttled; keepalives extend the lease) → as soon as the GPU is free
the next job is claimed, while this one's files are encoded and uploaded → the terminal callback is
retried until the API answers → only then is the message removed. If the child dies the job is handed
back (the API counts its tries); on SIGTERM the worker stops claiming, finishes or hands back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from handler.callbacks import CallbackAnswer, CallbackClient
from handler.child import ChildDied, ChildProcess
from handler.encoder import FileTooLarge
from handler.events import ChildEvent, Enhanced, Finished, Generated, JobFailed, Progress
from handler.settings import WorkerSettings
from handler.uploader import Uploader
from jobs.cancel import cancel_and_wait
from jobs.catalog import queue_of
from jobs.messages import JobCallback, QueueMessage
from jobs.queue import Queue, QueueUnavailable, job_id_of
from jobs.status import JobStatus
from jobs.storage import StorageError

log = logging.getLogger(__name__)

GENERATION_SHARE = 90  # progress 0-90 while generating; the rest is encoding and upload


class _Crashed:
    """Put in a job's event queue when the child died under it."""


@dataclass
class InFlight:
    message: QueueMessage
    payload: str
    attempt: int | None = None
    progress: int = 0
    last_report: float = 0.0
    events: asyncio.Queue[ChildEvent | _Crashed] = field(default_factory=asyncio.Queue)


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    handed_back: int = 0
    dropped: int = 0
    returned: int = 0  # messages given back unrun: a claim never answered, or a stray in our processing list
    child_restarts: int = 0
    load_seconds: list[float] = field(default_factory=list)


class Worker:
    def __init__(self, settings: WorkerSettings, queue: Queue, child: ChildProcess, callbacks: CallbackClient,
                 uploader: Uploader) -> None:
        self.settings = settings
        self.queue = queue
        self.child = child
        self.callbacks = callbacks
        self.uploader = uploader
        self.stats = WorkerStats()
        self._jobs: dict[str, InFlight] = {}
        # Jobs whose `processing` callback is on its way: not in `_jobs` yet, but already this worker's.
        self._claiming: set[str] = set()
        # Messages that a task of this worker works on, from the claim until the task ends.
        self._owned: set[str] = set()
        # Messages in our processing list that no task owned at the last check (see `_return_strays`).
        self._strays: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gpu_free = asyncio.Event()
        self._child_ready = False
        self._stopping = asyncio.Event()
        self._abandoned = False  # jobs were handed back while the child still works on them

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    def request_stop(self) -> None:
        """SIGTERM: claim nothing more; the running job finishes within the grace period or is handed back."""
        log.info("worker %s: stopping", self.worker_id)
        self._stopping.set()

    async def run(self, burst: bool = False) -> WorkerStats:
        """Serve jobs until stopped; `burst` returns once the queues are empty and nothing runs."""
        ready = await self.child.start()
        self.stats.load_seconds.append(ready.load_seconds)
        log.info("worker %s: models loaded in %.1f s; serving %s", self.worker_id, ready.load_seconds,
                 ",".join(self.settings.queues))
        self._child_ready = True
        self._gpu_free.set()
        background = [asyncio.create_task(self._heartbeat(), name="heartbeat"),
                      asyncio.create_task(self._dispatch(), name="dispatch")]
        try:
            await self._claim_loop(burst)
            await self._drain()
        finally:
            for task in background:
                await cancel_and_wait(task)
            with contextlib.suppress(QueueUnavailable):
                await self.queue.retire(self.worker_id)
            # A child still busy with a handed-back job would only finish it for nobody.
            await self.child.stop(timeout=1.0 if self._abandoned else 10.0)
        return self.stats

    async def _claim_loop(self, burst: bool) -> None:
        while not self._stopping.is_set():
            await self._wait_for(self._gpu_free)
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
            self._gpu_free.clear()
            self._owned.add(payload)
            task = asyncio.create_task(self._process(payload))
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

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace_seconds)
        unfinished = list(self._jobs.values())  # taken before cancelling: a cancelled task forgets its job
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._abandoned = bool(unfinished)
        for job in unfinished:
            await self._hand_back(job, "the worker stopped before the job finished")

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
            await self._requeue(payload)
            self._strays.discard(payload)
            self.stats.returned += 1

    async def _dispatch(self) -> None:
        """Route the child's events to their jobs; restart the child when it dies."""
        while True:
            try:
                event = await self.child.next_event()
            except ChildDied as exc:
                for running in self._jobs.values():
                    running.events.put_nowait(_Crashed())
                if self._stopping.is_set():  # its jobs are handed back; no new model process to load
                    log.warning("worker %s: %s while stopping", self.worker_id, exc)
                    self._child_ready = False
                    return
                log.error("worker %s: %s; restarting it", self.worker_id, exc)
                await self._restart_child()
                continue
            owner = self._jobs.get(getattr(event, "job_id", ""))
            if owner is not None:
                owner.events.put_nowait(event)

    async def _restart_child(self) -> None:
        self._child_ready = False
        self._gpu_free.clear()
        await self.child.stop(timeout=1)
        while True:
            try:
                ready = await self.child.start()
                break
            except (RuntimeError, ChildDied) as exc:
                log.error("worker %s: the model process failed to restart: %s", self.worker_id, exc)
                await asyncio.sleep(5)
        self.stats.child_restarts += 1
        self.stats.load_seconds.append(ready.load_seconds)
        self._child_ready = True
        self._gpu_free.set()

    # --- one job -----------------------------------------------------------------------------------

    async def _process(self, payload: str) -> None:
        job: InFlight | None = None
        try:
            job = await self._claim_job(payload)
            if job is not None:
                await self._run_claimed(job)
        except Exception:  # a bug must not take the message with it
            log.exception("job %s: unexpected error in the worker", job_id_of(payload))
            if job is not None and job.message.id in self._jobs:
                await self._hand_back(job, "unexpected error in the worker")
        finally:
            self._owned.discard(payload)
            if job is not None:
                self._jobs.pop(job.message.id, None)
                shutil.rmtree(self.settings.work_dir / job.message.id, ignore_errors=True)
            if self._child_ready and not self._claiming and not any(self._generating(j) for j in self._jobs.values()):
                self._gpu_free.set()

    @staticmethod
    def _generating(job: InFlight) -> bool:
        return job.progress < GENERATION_SHARE

    async def _claim_job(self, payload: str) -> InFlight | None:
        try:
            message = QueueMessage.model_validate_json(payload)
        except ValidationError as exc:
            log.error("worker %s: dropping a message that is not a job (%s): %.200s", self.worker_id,
                      job_id_of(payload), exc)
            await self._ack(payload)
            return None
        if message.id in self._jobs or message.id in self._claiming:
            # A second message for a job this worker is running or claiming (pushed again while Redis had
            # lost track of it). Running both would mix their events; the store decides whether the job
            # needs another run once this one ends, and the sweeper pushes it again if so.
            log.info("job %s: already running here; dropping a duplicate message", message.id)
            self.stats.dropped += 1
            await self._ack(payload)
            return None
        self._claiming.add(message.id)
        try:
            answer = await self.callbacks.deliver(JobCallback(job_id=message.id, status=JobStatus.PROCESSING,
                                                              worker_id=self.worker_id, progress=0))
        except Exception as exc:  # the deadline passed with the API unreachable
            # Whether the claim landed or not, the message goes back: if it did, our next claim of it is
            # accepted again, another worker's is refused and the job's lease runs out.
            log.error("job %s: the claim was never answered (%s); giving the message back", message.id, exc)
            await self._requeue(payload)
            self.stats.returned += 1
            return None
        finally:
            self._claiming.discard(message.id)
        if not answer.accepted:
            log.info("job %s: not ours to run (%s %s); dropping the message", message.id, answer.status_code,
                     answer.body.get("error"))
            self.stats.dropped += 1
            await self._ack(payload)
            return None
        job = InFlight(message, payload, attempt=answer.attempt)
        self._jobs[message.id] = job
        log.info("job %s: claimed, attempt %s", message.id, job.attempt)
        return job

    async def _run_claimed(self, job: InFlight) -> None:
        keepalive = asyncio.create_task(self._keepalive(job))
        try:
            outcome = await self._generate(job)
        finally:
            keepalive.cancel()
        if isinstance(outcome, _Crashed):
            await self._hand_back(job, "the model process died")
        elif isinstance(outcome, JobFailed):
            await self._finish(job, JobCallback(job_id=job.message.id, status=JobStatus.FAILED,
                                                error_message=outcome.error, attempt=job.attempt))
        else:
            await self._complete(job, outcome)

    async def _generate(self, job: InFlight) -> Finished | JobFailed | _Crashed:
        try:
            self.child.run(job.payload, self.settings.work_dir / job.message.id)
        except ChildDied:
            return _Crashed()
        while True:
            event = await job.events.get()
            if isinstance(event, Progress):
                await self._report_progress(job, int(GENERATION_SHARE * event.step / max(event.total, 1)))
            elif isinstance(event, Generated):
                job.progress = max(job.progress, GENERATION_SHARE)
                if self._child_ready:
                    self._gpu_free.set()  # the next job may start while this one is encoded and uploaded
            elif isinstance(event, Enhanced):
                log.debug("job %s: prompt enhanced", job.message.id)
            elif isinstance(event, Finished | JobFailed | _Crashed):
                return event

    async def _report_progress(self, job: InFlight, progress: int) -> None:
        job.progress = max(job.progress, min(progress, GENERATION_SHARE - 1))
        now = time.monotonic()
        if now - job.last_report < self.settings.progress_interval_seconds:
            return
        job.last_report = now
        await self._post_progress(job)

    async def _post_progress(self, job: InFlight) -> CallbackAnswer | None:
        return await self.callbacks.try_once(JobCallback(job_id=job.message.id, status=JobStatus.PROCESSING,
                                                         progress=job.progress, attempt=job.attempt,
                                                         worker_id=self.worker_id))

    async def _keepalive(self, job: InFlight) -> None:
        """Extend the job's lease while a long step (a VAE decode, an upload) reports no progress."""
        # Cancelled when the step ends; the check is for a cancellation that a library swallowed.
        while self._jobs.get(job.message.id) is job:
            await asyncio.sleep(self.settings.keepalive_seconds)
            job.last_report = time.monotonic()
            await self._post_progress(job)

    async def _complete(self, job: InFlight, finished: Finished) -> None:
        keepalive = asyncio.create_task(self._keepalive(job))
        try:
            assets = await self.uploader.upload_all(job.message, finished.files)
        except FileTooLarge as exc:
            await self._fail(job, str(exc))
            return
        except (StorageError, OSError) as exc:
            await self._fail(job, f"upload failed: {exc}")
            return
        finally:
            keepalive.cancel()
        metadata: dict[str, Any] = dict(finished.metadata)
        enhanced = metadata.pop("enhanced_prompt", None)
        await self._finish(job, JobCallback(job_id=job.message.id, status=JobStatus.COMPLETED, assets=assets,
                                            attempt=job.attempt, enhanced_prompt=enhanced, metadata=metadata,
                                            worker_id=self.worker_id))

    async def _fail(self, job: InFlight, error: str) -> None:
        await self._finish(job, JobCallback(job_id=job.message.id, status=JobStatus.FAILED, error_message=error,
                                            attempt=job.attempt, worker_id=self.worker_id))

    async def _finish(self, job: InFlight, callback: JobCallback) -> None:
        """The terminal callback, retried until answered; only then does the message leave the queue."""
        try:
            answer = await self.callbacks.deliver(callback)
        except Exception as exc:  # the deadline passed: the store's lease expiry takes the job over
            log.error("job %s: terminal callback never delivered: %s", job.message.id, exc)
            answer = None
        if answer is not None and answer.accepted:
            if callback.status is JobStatus.COMPLETED:
                self.stats.completed += 1
            else:
                self.stats.failed += 1
        elif answer is not None:
            log.warning("job %s: the API refused the %s callback: %s %s", job.message.id, callback.status,
                        answer.status_code, answer.body.get("details") or answer.body.get("error"))
        log.info("job %s: %s", job.message.id, callback.status)
        await self._ack(job.payload)

    async def _hand_back(self, job: InFlight, reason: str) -> None:
        """Give the job back for another try: the store first, then the message to the front of its queue."""
        log.warning("job %s: handing back: %s", job.message.id, reason)
        with contextlib.suppress(Exception):
            await self.callbacks.try_once(JobCallback(job_id=job.message.id, status=JobStatus.QUEUED,
                                                      attempt=job.attempt, worker_id=self.worker_id,
                                                      error_message=reason), timeout=10.0)
        self._jobs.pop(job.message.id, None)
        await self._requeue(job.payload)
        self.stats.handed_back += 1

    async def _requeue(self, payload: str) -> None:
        """Put a message back at the front of its queue, then take it out of our processing list."""
        try:
            message = QueueMessage.model_validate_json(payload)
        except ValidationError:
            await self._ack(payload)
            return
        try:
            await self.queue.push_front(queue_of(message.type), payload)
            await self.queue.ack(self.worker_id, payload)
        except QueueUnavailable as exc:
            # It stays in our processing list: `_return_strays` gives it back (or the sweeper, if we stop).
            log.error("job %s: could not give the message back: %s", message.id, exc)

    async def _ack(self, payload: str) -> None:
        try:
            await self.queue.ack(self.worker_id, payload)
        except QueueUnavailable as exc:
            log.warning("worker %s: ack failed (%s); the sweeper will tidy the message", self.worker_id, exc)
