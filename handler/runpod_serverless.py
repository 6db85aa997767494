"""The same job runner as a RunPod serverless endpoint: the endpoint's input is the queue message.

`python -m handler.runpod_serverless` loads the models once, then `runpod.serverless.start` calls
`handle` for each request. Progress goes to RunPod (`progress_update`) and, when an API URL is set,
to the API as signed callbacks, exactly as the pull worker sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from handler.callbacks import CallbackClient
from handler.events import ChildEvent, Progress
from handler.main import model_paths
from handler.runner import JobRunner
from handler.settings import WorkerSettings
from handler.uploader import Uploader
from jobs.messages import JobCallback, QueueMessage
from jobs.status import JobStatus

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def make_handler(runner: JobRunner, settings: WorkerSettings, report: Callable[[dict[str, Any], str], None]
                 ) -> Handler:
    storage = settings.open_storage(secrets.token_hex(16))
    uploader = Uploader(storage, settings.upload_attempts, settings.retry_base_seconds)

    async def handle(job: dict[str, Any]) -> dict[str, Any]:
        message = QueueMessage.model_validate(job["input"])
        async with httpx.AsyncClient() as http:
            callbacks = CallbackClient(settings.callback_url, settings.callback_secret, http,
                                       deadline=settings.callback_deadline_seconds)
            claimed = await callbacks.deliver(JobCallback(job_id=message.id, status=JobStatus.PROCESSING,
                                                          worker_id=settings.worker_id))
            if not claimed.accepted:
                return {"error": f"job not runnable: {claimed.body.get('error', claimed.status_code)}"}
            return await _run(message, claimed.attempt, callbacks, job)

    async def _run(message: QueueMessage, attempt: int | None, callbacks: CallbackClient,
                   job: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def emit(event: ChildEvent) -> None:
            if isinstance(event, Progress):
                loop.call_soon_threadsafe(report, job, f"{int(90 * event.step / max(event.total, 1))}%")

        work_dir = settings.work_dir / message.id
        try:
            future = await asyncio.to_thread(runner.run, message, work_dir, emit)
            files, metadata = await asyncio.wrap_future(future)
            assets = await uploader.upload_all(message, files)
        except Exception as exc:  # any failure of this job is reported as the job's failure
            await callbacks.deliver(JobCallback(job_id=message.id, status=JobStatus.FAILED, attempt=attempt,
                                                error_message=f"{type(exc).__name__}: {exc}"))
            return {"error": str(exc)}
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        enhanced = metadata.pop("enhanced_prompt", None)
        await callbacks.deliver(JobCallback(job_id=message.id, status=JobStatus.COMPLETED, assets=assets,
                                            attempt=attempt, enhanced_prompt=enhanced, metadata=metadata))
        paths = [a.url for a in assets]
        return {"primary_asset": paths[0], "all_assets": paths, "enhanced_prompt": enhanced}

    return handle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ourvidz as a RunPod serverless endpoint (input: a queue message).")
    parser.add_argument("--queues", default="sdxl,wan", help="model families to load: sdxl, wan or both")
    args, _runpod_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO)
    import runpod

    settings = WorkerSettings(queues=args.queues)
    runner = JobRunner(model_paths(settings), settings.queues, settings.device)
    handle = make_handler(runner, settings, runpod.serverless.progress_update)
    runpod.serverless.start({"handler": handle})


if __name__ == "__main__":
    main()
