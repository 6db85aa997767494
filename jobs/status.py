"""The job's status machine: the reference's four statuses plus `canceled`, and the moves between them.

```
            insert+charge            claim               callback completed
  (none) ───────────────▶ queued ───────────▶ processing ───────────────────▶ completed
                            ▲  │                  │  │
           lease expired,   │  │ cancel           │  └── failed / timeout / tries exhausted ──▶ failed (+refund)
           tries left ──────┘  └──────────────▶ canceled (+refund)
```
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def can_move_to(self, target: JobStatus) -> bool:
        return target in TRANSITIONS[self]

    @property
    def refunds(self) -> bool:
        """Whether entering this status gives the job's credits back."""
        return self in (JobStatus.FAILED, JobStatus.CANCELED)


_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.PROCESSING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


class IllegalTransition(Exception):
    """A move that the status machine lacks, such as `completed → processing`."""

    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a {current} job cannot become {target}")
        self.current = current
        self.target = target
