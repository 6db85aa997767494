"""What both queue implementations' tests share: many messages drained by concurrent claimers."""

from __future__ import annotations

import asyncio
import json

from jobs.catalog import SDXL_QUEUE, WAN_QUEUE
from jobs.queue import Queue


async def drain_concurrently(queue: Queue, timeout: float, messages: int = 200, claimers: int = 4
                             ) -> tuple[list[str], list[list[str]]]:
    """Push `messages` jobs over both queues, then let `claimers` workers (`w0`…) claim until empty.

    Returns the job ids pushed and, per worker, the payloads it claimed in order.
    """
    job_ids = [f"job-{n}" for n in range(messages)]
    for n, job_id in enumerate(job_ids):
        await queue.push(SDXL_QUEUE if n % 2 else WAN_QUEUE, json.dumps({"id": job_id, "type": "sdxl_image_fast"}))

    async def drain(worker: str) -> list[str]:
        got = []
        while (payload := await queue.claim([SDXL_QUEUE, WAN_QUEUE], worker, timeout=timeout)) is not None:
            got.append(payload)
        return got

    return job_ids, list(await asyncio.gather(*(drain(f"w{n}") for n in range(claimers))))
