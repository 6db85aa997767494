"""Uploading a job's files to its bucket: size-checked first, retried with backoff on transient errors."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from handler.encoder import FileTooLarge
from handler.events import OutputFile
from jobs.messages import CallbackAsset, QueueMessage
from jobs.storage import Storage, StorageError

log = logging.getLogger(__name__)


def object_path(message: QueueMessage, index: int) -> str:
    """`{user_id}/{job_id}_{index}.{ext}`: under the owner's folder, as Supabase storage RLS expects."""
    return f"{message.user_id}/{message.id}_{index}.{message.config.file_extension}"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and exc.retryable


class Uploader:
    def __init__(self, storage: Storage, attempts: int = 6, base_delay: float = 0.5) -> None:
        self._storage = storage
        self._attempts = attempts
        self._base_delay = base_delay

    async def upload_all(self, message: QueueMessage, files: list[OutputFile]) -> list[CallbackAsset]:
        limit = message.config.max_file_bytes
        sizes = [Path(f.path).stat().st_size for f in files]
        for index, size in enumerate(sizes):
            if size > limit:
                raise FileTooLarge(f"{files[index].kind} {index + 1}", size, limit)
        return list(await asyncio.gather(*(self._upload(message, i, f) for i, f in enumerate(files))))

    async def _upload(self, message: QueueMessage, index: int, output: OutputFile) -> CallbackAsset:
        path = object_path(message, index)
        data = await asyncio.to_thread(Path(output.path).read_bytes)
        retrying = AsyncRetrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(self._attempts),
                                 wait=wait_exponential_jitter(initial=self._base_delay, max=20.0), reraise=True)
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.info("job %s: upload of %s, try %d", message.id, path, attempt.retry_state.attempt_number)
                await self._storage.upload(message.bucket, path, data, output.content_type)
        return CallbackAsset(url=path, type="video" if output.kind == "video" else "image", metadata=output.metadata)
