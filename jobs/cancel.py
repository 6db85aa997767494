"""Stopping a background task for sure: cancel it, and cancel again while it still runs.

A library that swallows a cancellation (redis-py can, when one lands mid-command) must not leave a
heartbeat or sweeper loop running after its owner stopped: the owner would wait for it forever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any], every: float = 1.0) -> None:
    """Cancel `task` until it has ended; its own exception, if any, is logged, not raised."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
        if not task.done():
            log.warning("task %s ignored a cancellation; cancelling it again", task.get_name())
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s had failed: %r", task.get_name(), task.exception())
