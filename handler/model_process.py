"""The model process as the worker's parent sees it: started once, restarted when it dies, one job at a time.

It routes the child's events to the job they belong to, and starts a new child when the old one dies
(a segfault, a kill, an out-of-memory exit). A child that cannot be started `max_start_failures` times
in a row makes the models unavailable: the worker stops with that message instead of reloading the
weights in a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from handler.child import ChildDied, ChildProcess
from handler.errors import ModelProcessDied, ModelsUnavailable
from handler.events import ChildEvent
from jobs.cancel import cancel_and_wait

log = logging.getLogger(__name__)


class ModelState(Enum):
    STOPPED = "stopped"
    LOADING = "loading"
    READY = "ready"
    UNAVAILABLE = "unavailable"  # it could not be started again: the worker must stop


# What a job's event queue receives when the process died under it.
JobEvent = ChildEvent | ModelProcessDied


class ModelProcess:
    def __init__(self, child: ChildProcess, *, max_start_failures: int = 3, restart_delay: float = 5.0) -> None:
        self.child = child
        self.state = ModelState.STOPPED
        self.restarts = 0
        self.load_seconds: list[float] = []
        self.unavailable_reason = ""
        self._max_start_failures = max_start_failures
        self._restart_delay = restart_delay
        self._jobs: dict[str, asyncio.Queue[JobEvent]] = {}
        self._dispatch: asyncio.Task[None] | None = None
        self._stopping = False
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the state changes (the worker recomputes whether the GPU is free)."""
        self._listeners.append(listener)

    def _set(self, state: ModelState) -> None:
        self.state = state
        for listener in self._listeners:
            listener()

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    async def start(self) -> float:
        """Load the models (in a process spawned now, or earlier by `child.spawn()`); returns the seconds."""
        self._set(ModelState.LOADING)
        try:
            if not self.child.spawned:
                self.child.spawn()
            ready = await self.child.ready()
        except (RuntimeError, ChildDied) as exc:
            self.unavailable_reason = str(exc)
            self._set(ModelState.UNAVAILABLE)
            raise ModelsUnavailable(str(exc)) from exc
        self.load_seconds.append(ready.load_seconds)
        self._dispatch = asyncio.create_task(self._route(), name="model-events")
        self._set(ModelState.READY)
        return ready.load_seconds

    def run(self, job_id: str, payload: str, work_dir: Path) -> asyncio.Queue[JobEvent]:
        """Send a job to the process; its events arrive on the returned queue until `release`."""
        if not self.ready:
            raise ModelProcessDied(f"the model process is {self.state.value}")
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._jobs[job_id] = events
        try:
            self.child.run(payload, work_dir)
        except ChildDied as exc:
            self._jobs.pop(job_id, None)
            raise ModelProcessDied(str(exc)) from exc
        return events

    def stop_job(self, job_id: str) -> None:
        self.child.stop_job(job_id)

    def events_of(self, job_id: str) -> asyncio.Queue[JobEvent] | None:
        return self._jobs.get(job_id)

    def release(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    async def kill(self) -> None:
        """End the process now (a generation that would not stop); a new one is started as after a crash."""
        if self.child.process is not None and self.child.process.is_alive():
            log.warning("killing the model process (pid %s)", self.child.pid)
            self.child.process.kill()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._dispatch is not None:
            await cancel_and_wait(self._dispatch)
        await self.child.stop(timeout=timeout)
        self._set(ModelState.STOPPED)

    async def _route(self) -> None:
        while True:
            try:
                event = await self.child.next_event()
            except ChildDied as exc:
                for events in self._jobs.values():
                    events.put_nowait(ModelProcessDied(str(exc)))
                if self._stopping:
                    return
                log.error("%s; restarting it", exc)
                if not await self._restart():
                    return
                continue
            owner = self._jobs.get(getattr(event, "job_id", ""))
            if owner is not None:
                owner.put_nowait(event)

    async def _restart(self) -> bool:
        self._set(ModelState.LOADING)
        await self.child.stop(timeout=1)
        for failures in range(1, self._max_start_failures + 1):
            try:
                ready = await self.child.start()
            except (RuntimeError, ChildDied) as exc:
                log.error("the model process failed to restart (%d of %d): %s", failures,
                          self._max_start_failures, exc)
                self.unavailable_reason = str(exc)
                if failures < self._max_start_failures:
                    await asyncio.sleep(self._restart_delay)
                continue
            self.restarts += 1
            self.load_seconds.append(ready.load_seconds)
            self._set(ModelState.READY)
            return True
        self._set(ModelState.UNAVAILABLE)
        return False
