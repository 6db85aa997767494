"""The typed messages between the worker's parent process and its torch child, both ways.

parent → child: `RunJob`, `StopJob` (end that job's generation at its next step), `Shutdown`.
child → parent: `ChildReady`, `Progress`, `Enhanced`, `Generated` (the GPU is free for the next job),
`Finished` (encoded files written), `JobStopped` (its generation ended at a `StopJob`), `JobFailed`,
and `ChildFailed` (could not start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class RunJob:
    message_json: str
    work_dir: str


@dataclass(frozen=True, slots=True)
class StopJob:
    job_id: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class ChildReady:
    load_seconds: float


@dataclass(frozen=True, slots=True)
class ChildFailed:
    error: str


@dataclass(frozen=True, slots=True)
class Progress:
    job_id: str
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class Enhanced:
    job_id: str
    prompt: str


@dataclass(frozen=True, slots=True)
class Generated:
    job_id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class OutputFile:
    path: str
    kind: str
    content_type: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finished:
    job_id: str
    files: list[OutputFile]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobStopped:
    job_id: str


@dataclass(frozen=True, slots=True)
class JobFailed:
    job_id: str
    error: str
    # "out_of_memory": the device ran out of memory; the model process exits after reporting it, and the
    # job deserves another try on a fresh one.
    kind: Literal["generation", "encoding", "out_of_memory"] = "generation"


ChildEvent = ChildReady | ChildFailed | Progress | Enhanced | Generated | Finished | JobStopped | JobFailed
