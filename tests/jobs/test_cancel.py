"""Stopping background tasks for sure, even ones that swallow a cancellation."""

from __future__ import annotations

import asyncio

from jobs.cancel import cancel_and_wait


async def test_a_task_that_swallows_its_first_cancellation_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn_loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:  # as redis-py can, mid-command
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn_loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, every=0.05), 5)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_failed_before_the_stop_does_not_fail_the_stop() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)
