"""The worker as a RunPod serverless endpoint: the request's input is the queue message, run by the job lifecycle.

`python -m handler.runpod_serverless` spawns the model process (it loads while RunPod starts its job
loop), then `runpod.serverless.start` calls `handle` for each request. A request runs the same lifecycle
as the pull worker: claim by callback, keepalives and throttled progress (to the API and to RunPod),
upload, the final callback. A RunPod stop (a `/cancel`, the execution timeout) cancels the handler's task:
the generation is stopped at its next step, the job is handed back to the API (which dispatches it again),
and only then does the handler return. The output names the bucket and paths of the files; a job that
did not complete answers RunPod with `{"error": ...}`, its reason included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from handler.callbacks import CallbackClient
from handler.child import ChildProcess
from handler.errors import ModelsUnavailable
from handler.lifecycle import JobLifecycle, JobResult
from handler.main import model_paths
from handler.model_process import ModelProcess
from handler.settings import WorkerSettings
from handler.uploader import Uploader

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ReportProgress = Callable[[dict[str, Any], Any], None]


class RequestSource:
    """Messages from RunPod requests: nothing to acknowledge, nothing to push back. A job handed back is
    `queued` in the API's store, which dispatches it to the endpoint again."""

    async def settle(self, payload: str) -> None:
        return None

    async def give_back(self, payload: str) -> None:
        return None


class ServerlessWorker:
    """One model process and one job at a time, for as long as RunPod keeps the worker."""

    def __init__(self, settings: WorkerSettings, report: ReportProgress) -> None:
        self.settings = settings
        self._report = report
        self.child = ChildProcess(model_paths(settings), settings.queues, settings.device,
                                  build=settings.build_checkpoints, checkpoints_dir=settings.checkpoints_dir)
        self.models = ModelProcess(self.child)
        self._lifecycle: JobLifecycle | None = None
        self._loading: asyncio.Future[JobLifecycle] | None = None
        self._one_at_a_time = asyncio.Lock()

    def preload(self) -> None:
        """Start loading the models before RunPod's loop starts (a request then waits only for the rest)."""
        self.child.spawn()

    async def _open(self) -> JobLifecycle:
        """The lifecycle, once the models are loaded. The load runs in a task of its own, shielded: a request
        stopped while it waits must not cancel a load that the next request needs."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        return await asyncio.shield(self._loading)

    async def _load(self) -> JobLifecycle:
        # Opened on RunPod's event loop, at its first request: the HTTP client belongs to that loop.
        settings = self.settings
        http = httpx.AsyncClient()
        callbacks = CallbackClient(settings.callback_url, settings.callback_secret, http,
                                   deadline=settings.serverless_callback_deadline_seconds,
                                   base_delay=settings.retry_base_seconds)
        storage = settings.open_storage(secrets.token_hex(16))
        uploader = Uploader(storage, settings.upload_attempts, settings.retry_base_seconds)
        await self.models.start()
        self._lifecycle = JobLifecycle(settings, self.models, callbacks, uploader)
        return self._lifecycle

    @property
    def busy(self) -> bool:
        return self._lifecycle is not None and bool(self._lifecycle.running)

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._one_at_a_time:
            try:
                lifecycle = await self._open()
            except ModelsUnavailable as exc:
                # The job was never claimed: the API dispatches it again. This worker is of no use: RunPod
                # is asked to replace it rather than send it more jobs.
                log.error("the models cannot be loaded: %s", exc)
                return {"error": f"models unavailable: {exc}", "status": "unavailable", "refresh_worker": True}
            payload = json.dumps(request.get("input"))
            result = await lifecycle.run(payload, RequestSource(), self._progress_reporter(request))
            if result.stop_worker:
                return {**output_of(result), "refresh_worker": True}
        return output_of(result)

    def _progress_reporter(self, request: dict[str, Any]) -> Callable[[int], None]:
        interval = self.settings.progress_interval_seconds
        last = 0.0

        def report(progress: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= interval:  # the API's reports are throttled already; RunPod's get their own clock
                last = now
                self._report(request, f"{progress}%")

        return report


def output_of(result: JobResult) -> dict[str, Any]:
    """RunPod's output: the files of a completed job; `{"error": ...}` for anything else."""
    if result.action != "completed":
        return {"error": f"{result.action}: {result.reason}", "job_id": result.job_id, "status": result.action}
    paths = [asset.url for asset in result.assets]
    return {"job_id": result.job_id, "status": "completed", "bucket": result.bucket, "primary_asset": paths[0],
            "all_assets": paths, "assets": [asset.model_dump() for asset in result.assets],
            "enhanced_prompt": result.enhanced_prompt}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ourvidz as a RunPod serverless endpoint (input: a queue message).")
    parser.add_argument("--queues", default=None, help="model families to load: sdxl, wan or both")
    args, _runpod_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO)
    import runpod

    settings = WorkerSettings() if args.queues is None else WorkerSettings(queues=args.queues)
    worker = ServerlessWorker(settings, runpod.serverless.progress_update)
    worker.preload()
    runpod.serverless.start({"handler": worker.handle})


if __name__ == "__main__":
    main()
