"""One job's life on a worker, the same for the pull worker and the RunPod serverless handler.

claim (a `processing` callback; its answer's attempt number is the fencing token) → generate in the
model process (throttled progress; keepalives extend the lease) → upload → the terminal callback,
retried until answered. Any failure on the way is mapped to what it means by `handler.errors.outcome_of`:
fail the job, hand it back for another try, give the message back unclaimed, drop it, or stop the
worker. A cancellation (SIGTERM past the grace period, a RunPod stop) first ends the generation, then
hands the job back. Where the message came from, and where it goes back to, is the `Source`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from pydantic import ValidationError

from handler.callbacks import CallbackAnswer, CallbackClient
from handler.errors import (
    Action,
    ClaimNotAnswered,
    EncodingFailed,
    GenerationFailed,
    GenerationStopped,
    JobLost,
    ModelProcessDied,
    Outcome,
    OutOfMemory,
    UploadFailed,
    outcome_of,
)
from handler.events import Enhanced, Finished, Generated, JobFailed, JobStopped, Progress
from handler.model_process import JobEvent, ModelProcess
from handler.settings import WorkerSettings
from handler.uploader import Uploader
from jobs.cancel import cancel_and_wait
from jobs.legacy_messages import read_message
from jobs.messages import CallbackAsset, JobCallback, QueueMessage
from jobs.queue import job_id_of
from jobs.status import JobStatus
from jobs.storage import StorageError

log = logging.getLogger(__name__)

GENERATION_SHARE = 90  # progress 0-90 while generating; the rest is encoding and upload
# Answers to a keepalive that mean the attempt is over: stale, failed, canceled, or the job is gone.
LOST_STATUS = frozenset({404, 409})


class Source(Protocol):
    """Where a message came from: a queue (the pull worker) or a RunPod request (serverless)."""

    async def give_back(self, payload: str) -> None:
        """The message returns to where it is taken next (the API's store already says `queued`)."""
        ...

    async def settle(self, payload: str) -> None:
        """The message is done with: its job ended, or it was never ours to run."""
        ...


class Phase(Enum):
    CLAIMING = "claiming"
    GENERATING = "generating"
    FINISHING = "finishing"  # encoding, upload, the terminal callback: the GPU is free for the next job


@dataclass
class JobRun:
    message: QueueMessage
    payload: str
    on_progress: Callable[[int], None] | None
    phase: Phase = Phase.CLAIMING
    attempt: int | None = None
    progress: int = 0
    last_report: float = 0.0
    lost: str | None = None  # why the API stopped this attempt, once a keepalive learned it

    @property
    def job_id(self) -> str:
        return self.message.id


@dataclass(frozen=True, slots=True)
class JobResult:
    """How a job ended on this worker: `completed`, `refused` (the API turned its completion down), `failed`,
    `handed_back`, `given_back` or `dropped`."""

    job_id: str | None
    action: str
    reason: str = ""
    assets: tuple[CallbackAsset, ...] = ()
    enhanced_prompt: str | None = None
    bucket: str | None = None
    stop_worker: bool = False


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    handed_back: int = 0
    dropped: int = 0
    returned: int = 0  # messages given back unrun: a claim never answered, or a stray in our processing list
    child_restarts: int = 0
    load_seconds: list[float] = field(default_factory=list)

    def count(self, result: JobResult) -> None:
        counter = {"completed": "completed", "failed": "failed", "handed_back": "handed_back",
                   "given_back": "returned", "dropped": "dropped"}.get(result.action)
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + 1)


class JobLifecycle:
    def __init__(self, settings: WorkerSettings, models: ModelProcess, callbacks: CallbackClient,
                 uploader: Uploader) -> None:
        self.settings = settings
        self.models = models
        self.callbacks = callbacks
        self.uploader = uploader
        self.stats = WorkerStats()
        self._runs: dict[str, JobRun] = {}
        # Set while the model process is ready and no job is claiming or generating: the next may start.
        self.gpu_free = asyncio.Event()
        models.on_change(self._refresh)

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def running(self) -> dict[str, JobRun]:
        return dict(self._runs)

    def _refresh(self) -> None:
        busy = any(run.phase is not Phase.FINISHING for run in self._runs.values())
        if self.models.ready and not busy:
            self.gpu_free.set()
        else:
            self.gpu_free.clear()

    def _enter(self, run: JobRun, phase: Phase) -> None:
        run.phase = phase
        self._refresh()

    async def run(self, payload: str, source: Source, on_progress: Callable[[int], None] | None = None
                  ) -> JobResult:
        """The whole life of one message; a cancellation is re-raised once the job is handed back."""
        try:
            return await self._run(payload, source, on_progress)
        finally:
            self._refresh()

    async def _run(self, payload: str, source: Source, on_progress: Callable[[int], None] | None) -> JobResult:
        try:
            message = read_message(payload)
        except ValidationError as exc:
            log.error("worker %s: dropping a message that is not a job (%s): %.200s", self.worker_id,
                      job_id_of(payload), exc)
            return await self._ended(source, payload, JobResult(job_id_of(payload), "dropped", "not a job"))
        if message.id in self._runs:
            # A second message for a job this worker is running (pushed again while Redis had lost track of
            # it). Running both would mix their events; the store decides whether the job needs another run
            # once this one ends, and the sweeper pushes it again if so.
            log.info("job %s: already running here; dropping a duplicate message", message.id)
            return await self._ended(source, payload, JobResult(message.id, "dropped", "already running here"))
        run = JobRun(message, payload, on_progress)
        self._runs[message.id] = run
        self._refresh()
        try:
            return await self._live(run, source)
        finally:
            self._runs.pop(message.id, None)
            self.models.release(message.id)
            shutil.rmtree(self.settings.work_dir / message.id, ignore_errors=True)

    async def _live(self, run: JobRun, source: Source) -> JobResult:
        try:
            await self._claim(run)
            return await self._run_claimed(run, source)
        except asyncio.CancelledError as exc:
            await self._end_generation(run)
            await self._settle(run, source, outcome_of(exc))
            raise
        except Exception as exc:
            outcome = outcome_of(exc)
            if outcome.action is Action.HAND_BACK and not isinstance(exc, GenerationStopped | ModelProcessDied
                                                                     | OutOfMemory):
                log.exception("job %s: unexpected error in the worker", run.job_id)
            return await self._settle(run, source, outcome)

    # --- the steps ---------------------------------------------------------------------------------

    async def _claim(self, run: JobRun) -> None:
        try:
            answer = await self.callbacks.deliver(JobCallback(job_id=run.job_id, status=JobStatus.PROCESSING,
                                                              worker_id=self.worker_id, progress=0))
        except Exception as exc:  # the deadline passed with the API unreachable
            # Whether the claim landed or not, the message goes back: if it did, our next claim of it is
            # accepted again, another worker's is refused and the job's lease runs out.
            raise ClaimNotAnswered(f"the claim was never answered ({exc})") from exc
        if not answer.accepted:
            raise JobLost(f"not ours to run: {answer.status_code} {_refusal(answer)}")
        run.attempt = answer.attempt
        log.info("job %s: claimed, attempt %s", run.job_id, run.attempt)

    async def _run_claimed(self, run: JobRun, source: Source) -> JobResult:
        keepalive = asyncio.create_task(self._keepalive(run), name=f"keepalive-{run.job_id}")
        try:
            finished = await self._generate(run)
            assets = await self._upload(run, finished)
        finally:
            await cancel_and_wait(keepalive)
        metadata: dict[str, Any] = dict(finished.metadata)
        enhanced = metadata.pop("enhanced_prompt", None)
        callback = JobCallback(job_id=run.job_id, status=JobStatus.COMPLETED, assets=assets, attempt=run.attempt,
                               enhanced_prompt=enhanced, metadata=metadata, worker_id=self.worker_id)
        answer = await self._terminal(callback)
        await source.settle(run.payload)
        if answer is None or not answer.accepted:
            reason = "the API never answered" if answer is None else f"{answer.status_code} {_refusal(answer)}"
            return self._counted(JobResult(run.job_id, "refused", f"completion refused: {reason}",
                                           bucket=run.message.bucket))
        return self._counted(JobResult(run.job_id, "completed", assets=tuple(assets), enhanced_prompt=enhanced,
                                       bucket=run.message.bucket))

    async def _generate(self, run: JobRun) -> Finished:
        self._enter(run, Phase.GENERATING)
        # The message as read (an old-format one upgraded); `run.payload` stays what the queue holds, to ack.
        events = self.models.run(run.job_id, run.message.model_dump_json(), self.settings.work_dir / run.job_id)
        while True:
            event = await events.get()
            if isinstance(event, Progress):
                await self._report_progress(run, int(GENERATION_SHARE * event.step / max(event.total, 1)))
            elif isinstance(event, Generated):
                run.progress = max(run.progress, GENERATION_SHARE)
                self._enter(run, Phase.FINISHING)  # the next job may start while this one is encoded
            elif isinstance(event, Enhanced):
                log.debug("job %s: prompt enhanced", run.job_id)
            elif isinstance(event, Finished):
                self._enter(run, Phase.FINISHING)
                return event
            else:
                raise _failure_of(run, event)

    async def _upload(self, run: JobRun, finished: Finished) -> list[CallbackAsset]:
        try:
            return await self.uploader.upload_all(run.message, finished.files)
        except (StorageError, OSError) as exc:
            raise UploadFailed(f"upload failed: {exc}") from exc

    async def _report_progress(self, run: JobRun, progress: int) -> None:
        run.progress = max(run.progress, min(progress, GENERATION_SHARE - 1))
        now = time.monotonic()
        if now - run.last_report < self.settings.progress_interval_seconds:
            return
        run.last_report = now
        await self._post_progress(run)

    async def _post_progress(self, run: JobRun) -> None:
        if run.on_progress is not None:
            run.on_progress(run.progress)
        answer = await self.callbacks.try_once(JobCallback(job_id=run.job_id, status=JobStatus.PROCESSING,
                                                           progress=run.progress, attempt=run.attempt,
                                                           worker_id=self.worker_id))
        if answer is not None and answer.status_code in LOST_STATUS and run.lost is None:
            # The API ended this attempt (its deadline passed, it was re-queued): stop spending the GPU on it.
            run.lost = _refusal(answer)
            log.warning("job %s: the API stopped this attempt (%s); stopping its generation", run.job_id, run.lost)
            if run.phase is Phase.GENERATING:
                self.models.stop_job(run.job_id)

    async def _keepalive(self, run: JobRun) -> None:
        """Extend the job's lease while a long step (a VAE decode, an upload) reports no progress."""
        while True:
            await asyncio.sleep(self.settings.keepalive_seconds)
            if time.monotonic() - run.last_report >= self.settings.keepalive_seconds / 2:
                run.last_report = time.monotonic()
                await self._post_progress(run)

    async def _end_generation(self, run: JobRun) -> None:
        """Stop the job's generation and wait until it has ended; kill the process if it will not."""
        if run.phase is not Phase.GENERATING:
            return
        self.models.stop_job(run.job_id)
        events = self.models.events_of(run.job_id)
        if events is None:
            return
        deadline = time.monotonic() + self.settings.stop_timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(events.get(), left)
            except TimeoutError:
                break
            if isinstance(event, Finished | JobStopped | JobFailed | ModelProcessDied):
                return
        log.warning("job %s: its generation did not stop within %.0f s", run.job_id,
                    self.settings.stop_timeout_seconds)
        await self.models.kill()

    # --- how it ends -------------------------------------------------------------------------------

    async def _settle(self, run: JobRun, source: Source, outcome: Outcome) -> JobResult:
        action = outcome.action
        if action is Action.FAIL:
            answer = await self._terminal(JobCallback(job_id=run.job_id, status=JobStatus.FAILED,
                                                      attempt=run.attempt, error_message=outcome.reason,
                                                      worker_id=self.worker_id))
            ended = "failed" if answer is not None and answer.accepted else "refused"
            return await self._ended(source, run.payload, JobResult(run.job_id, ended, outcome.reason))
        if action is Action.DROP:
            log.info("job %s: %s; dropping the message", run.job_id, outcome.reason)
            return await self._ended(source, run.payload, JobResult(run.job_id, "dropped", outcome.reason))
        if action is Action.GIVE_BACK or run.attempt is None:
            log.error("job %s: %s; giving the message back", run.job_id, outcome.reason)
            await source.give_back(run.payload)
            return self._counted(JobResult(run.job_id, "given_back", outcome.reason))
        await self._hand_back(run, outcome.reason)
        await source.give_back(run.payload)
        return self._counted(JobResult(run.job_id, "handed_back", outcome.reason,
                                       stop_worker=action is Action.STOP_WORKER))

    async def _hand_back(self, run: JobRun, reason: str) -> None:
        """The store first: the job is `queued` again, its try counted."""
        log.warning("job %s: handing back: %s", run.job_id, reason)
        with contextlib.suppress(Exception):
            await self.callbacks.try_once(JobCallback(job_id=run.job_id, status=JobStatus.QUEUED,
                                                      attempt=run.attempt, worker_id=self.worker_id,
                                                      error_message=reason), timeout=10.0)

    async def _terminal(self, callback: JobCallback) -> CallbackAnswer | None:
        """The terminal callback, retried until answered (or its deadline passes: the lease then takes over)."""
        try:
            answer = await self.callbacks.deliver(callback)
        except Exception as exc:
            log.error("job %s: terminal callback never delivered: %s", callback.job_id, exc)
            return None
        if not answer.accepted:
            log.warning("job %s: the API refused the %s callback: %s %s", callback.job_id, callback.status,
                        answer.status_code, _refusal(answer))
        log.info("job %s: %s", callback.job_id, callback.status)
        return answer

    async def _ended(self, source: Source, payload: str, result: JobResult) -> JobResult:
        await source.settle(payload)
        return self._counted(result)

    def _counted(self, result: JobResult) -> JobResult:
        self.stats.count(result)
        return result


def _failure_of(run: JobRun, event: JobEvent) -> Exception:
    """The typed failure of a job's last event from the model process."""
    if isinstance(event, ModelProcessDied):
        return event
    if isinstance(event, JobStopped):
        return JobLost(run.lost) if run.lost is not None else GenerationStopped("the generation was stopped")
    assert isinstance(event, JobFailed)
    if event.kind == "out_of_memory":
        return OutOfMemory(event.error)
    if event.kind == "encoding":
        return EncodingFailed(event.error)
    return GenerationFailed(event.error)


def _refusal(answer: CallbackAnswer) -> str:
    return str(answer.body.get("details") or answer.body.get("error") or answer.status_code)
