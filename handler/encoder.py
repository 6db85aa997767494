"""Encoding of generated frames (uint8 numpy arrays) into PNG and H.264 MP4 files, in a thread pool.

`Encoder.encode(spec, outputs)` is what the worker calls: one file per output, each checked against
the bucket's size limit, so that an oversized file fails the job with a clear `FileTooLarge`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
from PIL import Image

from handler.errors import JobFailure
from jobs.catalog import MB, JobSpec, OutputKind

logger = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 1
MP4_OPTIONS = {"crf": "18", "preset": "veryfast"}

_T = TypeVar("_T")


class FileTooLarge(JobFailure):
    """An encoded file is over its bucket's limit: the job fails rather than upload a truncated file."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        over = f"{_megabytes(size, above=limit)} MB, over the bucket's {_megabytes(limit)} MB limit"
        super().__init__(f"{name} is {over}")
        self.name = name
        self.size = size
        self.limit = limit


def _megabytes(size: int, above: int | None = None) -> str:
    """`size` in MB to 3 significant digits, or more where needed to read as more than `above`."""
    text = f"{size / MB:.3g}"
    digits = 3
    # 5.0001 MB over a 5 MB limit must not read "5 MB, over the bucket's 5 MB limit".
    while above is not None and float(text) * MB <= above and digits < 12:
        digits += 1
        text = f"{size / MB:.{digits}g}"
    return text


def check_size(data: bytes, limit: int, name: str) -> None:
    """Raise FileTooLarge when `data` is over `limit` bytes; `name` says which file ("image 3")."""
    if len(data) > limit:
        raise FileTooLarge(name, len(data), limit)


def encode_png(image: np.ndarray) -> bytes:
    """A PNG of an (H, W), (H, W, 3) or (H, W, 4) uint8 image, at compress_level=1 for speed."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def check_frames(frames: np.ndarray, fps: int) -> None:
    """Refuse what libx264 in yuv420p cannot take, naming the bad argument and its value."""
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T >= 1, H, W, 3), got shape {frames.shape}")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps}")
    height, width = frames.shape[1:3]
    # yuv420p halves the chroma planes in both directions.
    if width % 2:
        raise ValueError(f"width must be even for yuv420p, got {width}")
    if height % 2:
        raise ValueError(f"height must be even for yuv420p, got {height}")


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """An H.264 MP4 (yuv420p, crf 18, veryfast, +faststart) of (T, H, W, 3) uint8 RGB frames."""
    check_frames(frames, fps)
    height, width = frames.shape[1:3]
    # +faststart moves the moov atom to the front in a second pass that re-opens the output by name,
    # which an in-memory buffer cannot do; so the file goes through a temp folder.
    with tempfile.TemporaryDirectory(prefix="ourvidz-mp4-") as folder:
        path = Path(folder) / "video.mp4"
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps, options=MP4_OPTIONS)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        return path.read_bytes()


class Encoder:
    """A small thread pool that keeps encoding off the event loop, so uploads and heartbeats go on.

    Pillow's PNG encoder runs without the GIL (two threads encode six 1024x1024 PNGs about twice as
    fast as one, on an idle 2-core machine); x264 runs its own threads besides.
    """

    def __init__(self, max_workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="encoder")

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for running encodes and stop the threads."""
        self._pool.shutdown(wait=True)

    async def png(self, image: np.ndarray) -> bytes:
        return await self._run(encode_png, image)

    async def pngs(self, images: Sequence[np.ndarray]) -> list[bytes]:
        return list(await asyncio.gather(*(self.png(image) for image in images)))

    async def mp4(self, frames: np.ndarray, fps: int) -> bytes:
        return await self._run(encode_mp4, frames, fps)

    async def encode(self, spec: JobSpec, outputs: Sequence[np.ndarray]) -> list[bytes]:
        """One file per output of a job (images, or (T, H, W, 3) videos), each within the bucket's limit."""
        if spec.output is OutputKind.VIDEO:
            files = [await self.mp4(video, spec.fps) for video in outputs]
        else:
            files = await self.pngs(outputs)
        for number, data in enumerate(files, start=1):
            check_size(data, spec.max_file_bytes, f"{spec.output.value} {number}")
        logger.debug(
            "encoded %d %s file(s) for %s: %s bytes",
            len(files),
            spec.file_extension,
            spec.job_type,
            [len(data) for data in files],
        )
        return files

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
