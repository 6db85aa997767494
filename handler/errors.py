"""The worker's failures, and the one place that says what each means for the job and the worker.

    WorkerError
     ├── ClaimNotAnswered       the API never answered the claim: the message goes back, unrun
     ├── JobLost                the API no longer lets this attempt run (stale, failed, canceled): drop it
     ├── GenerationStopped      a stop was asked for (shutdown, RunPod cancel): hand the job back
     ├── ModelProcessDied       the model process ended under the job (segfault, kill): hand back, restart
     ├── OutOfMemory            the device ran out of memory: hand back; the model process restarts
     ├── ModelsUnavailable      the models cannot be loaded at all: hand back and stop the worker
     └── JobFailure             this job cannot succeed: fail it (refunded by the API)
          ├── GenerationFailed  the pipeline raised
          ├── EncodingFailed    PNG/MP4 encoding raised
          ├── FileTooLarge      an output is over its bucket's limit (handler/encoder.py)
          └── UploadFailed      storage refused the file, or stayed down through every retry

Anything else (a bug, `asyncio.CancelledError`) hands the job back: a bug must not take a job with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum


class WorkerError(Exception):
    """Base of the worker's own failures."""


class ClaimNotAnswered(WorkerError):
    pass


class JobLost(WorkerError):
    pass


class GenerationStopped(WorkerError):
    pass


class ModelProcessDied(WorkerError):
    pass


class OutOfMemory(WorkerError):
    pass


class ModelsUnavailable(WorkerError):
    pass


class JobFailure(WorkerError):
    pass


class GenerationFailed(JobFailure):
    pass


class EncodingFailed(JobFailure):
    pass


class UploadFailed(JobFailure):
    pass


class Action(Enum):
    FAIL = "fail"  # a failed callback: the job ends, refunded
    HAND_BACK = "hand_back"  # a queued callback: another try, on this worker or another
    GIVE_BACK = "give_back"  # the API never saw a claim: the message goes back as it came
    DROP = "drop"  # not ours any more: nothing to report
    STOP_WORKER = "stop_worker"  # hand back, then stop claiming


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    reason: str


def outcome_of(exc: BaseException) -> Outcome:
    """What a failure during a job means for it: the one mapping both worker modes use."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, JobFailure):
        return Outcome(Action.FAIL, reason)
    if isinstance(exc, JobLost):
        return Outcome(Action.DROP, reason)
    if isinstance(exc, ClaimNotAnswered):
        return Outcome(Action.GIVE_BACK, reason)
    if isinstance(exc, ModelsUnavailable):
        return Outcome(Action.STOP_WORKER, reason)
    if isinstance(exc, GenerationStopped | ModelProcessDied | OutOfMemory):
        return Outcome(Action.HAND_BACK, reason)
    if isinstance(exc, asyncio.CancelledError):
        return Outcome(Action.HAND_BACK, "the worker was stopped during the job")
    return Outcome(Action.HAND_BACK, f"unexpected error in the worker: {type(exc).__name__}: {exc}")
