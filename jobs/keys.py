"""Every Redis key ourvidz writes, in one place (the queues themselves are the reference's names)."""

from __future__ import annotations

PREFIX = "ourvidz"
WORKERS = f"{PREFIX}:workers"
SWEEPER_LOCK = f"{PREFIX}:sweeper"
# Job ids whose message was pushed, scored by when: a message taken by a consumer that keeps no processing
# list (an `RPOP`) is still accounted for here, so the sweeper does not push it again (jobs/queue.py).
PUSHED = f"{PREFIX}:pushed"


def processing_list(worker_id: str) -> str:
    """The list a worker moves its claimed messages into; emptied only after the terminal callback."""
    return f"{PREFIX}:processing:{worker_id}"


def heartbeat(worker_id: str) -> str:
    """A key with a TTL: while it exists the worker is alive and its processing list is its own."""
    return f"{PREFIX}:worker:{worker_id}"


def rate_counter(policy: str, subject: str, window: int) -> str:
    """Requests of one subject (a user, a client address) under one rate-limit policy, in one window."""
    return f"{PREFIX}:rate:{policy}:{subject}:{window}"
