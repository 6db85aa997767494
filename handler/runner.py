"""The job runner: models loaded once and kept resident; one job in, encoded files out.

It is what the worker's child process runs, and what the RunPod serverless handler runs in-process.
Generation takes the caller's thread; encoding goes to a small thread pool (zlib and x264 release
the GIL), so the next job's generation can start while this one's files are still being written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handler.encoder import encode_mp4, encode_png
from handler.errors import GenerationStopped
from handler.events import ChildEvent, Enhanced, Generated, OutputFile, Progress
from jobs.catalog import SDXL_QUEUE, WAN_QUEUE
from jobs.messages import MAX_SEED, QueueMessage

log = logging.getLogger(__name__)

Emit = Callable[[ChildEvent], None]

ENHANCER_MAX_NEW_TOKENS = 160  # Wan's prompt extender aims at 80-100 words, about 150 tokens


@dataclass(frozen=True, slots=True)
class ModelPaths:
    sdxl: Path | None
    wan: Path | None
    enhancer: Path | None
    sdxl_config: Path | None = None  # a diffusers SDXL folder, for a single-file checkpoint (LUSTIFY)


class JobRunner:
    """Loads the pipelines of its queues once, then runs jobs one at a time."""

    def __init__(self, paths: ModelPaths, queues: list[str], device: str = "auto", encode_threads: int = 2) -> None:
        from models.device import pick_device

        self.device = str(pick_device(None if device == "auto" else device))
        self._sdxl: Any = None
        self._wan: Any = None
        self._enhancer: Any = None
        started = time.perf_counter()
        for name, path in (("SDXL", paths.sdxl if SDXL_QUEUE in queues else None),
                           ("Wan", paths.wan if WAN_QUEUE in queues else None)):
            if path is not None and not path.exists():
                raise FileNotFoundError(f"no {name} checkpoint at {path}: run scripts/download_weights.py, "
                                        "or `ourvidz make-checkpoints` for random weights")
        if SDXL_QUEUE in queues and paths.sdxl is not None:
            from models.sdxl import SdxlGenerator

            config = paths.sdxl_config if paths.sdxl.is_file() else None
            self._sdxl = SdxlGenerator.load(paths.sdxl, device=self.device, config=config)
        if WAN_QUEUE in queues and paths.wan is not None:
            from models.wan import WanGenerator

            self._wan = WanGenerator.load(paths.wan, device=self.device)
            if paths.enhancer is not None:
                from models.enhancer import PromptEnhancer

                self._enhancer = PromptEnhancer.load(paths.enhancer, device=self.device)
        self.load_seconds = time.perf_counter() - started
        self._pool = ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="encode")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run(self, message: QueueMessage, work_dir: Path, emit: Emit, should_stop: Callable[[], bool] = lambda: False
            ) -> Future[tuple[list[OutputFile], dict[str, Any]]]:
        """Generate now (emitting progress); return a future of the encoded files and the job's metadata.

        `should_stop` is asked at every denoising step: when it says so, the generation ends there with
        `GenerationStopped`, so a stopped job never runs on beside the next one.
        """
        job_id = message.id
        started = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            if should_stop():
                raise GenerationStopped(f"stopped at step {step} of {total}")
            emit(Progress(job_id, step, total))

        if message.type.startswith("sdxl") or message.model_variant == "lustify_sdxl":
            frames, metadata = self._generate_sdxl(message, on_step)
        else:
            frames, metadata = self._generate_wan(message, on_step, emit)
        seconds = time.perf_counter() - started
        metadata["generation_seconds"] = round(seconds, 3)
        emit(Generated(job_id, seconds))
        work_dir.mkdir(parents=True, exist_ok=True)
        return self._pool.submit(self._encode, message, frames, metadata, work_dir)

    def _generate_sdxl(self, message: QueueMessage, on_step: Callable[[int, int], None]
                       ) -> tuple[list[np.ndarray], dict[str, Any]]:
        if self._sdxl is None:
            raise RuntimeError("this worker has no SDXL model loaded")
        config = message.config
        # Each image gets its own seed, so any one of the six can be reproduced alone.
        seeds = [(config.seed + i) % (MAX_SEED + 1) for i in range(config.num_images)]
        images = self._sdxl.generate(
            message.prompt, message.negative_prompt, num_images=config.num_images, width=config.width,
            height=config.height, steps=config.sample_steps, guidance=config.sample_guide_scale, seeds=seeds,
            on_step=on_step,
        )
        return list(images), {"seeds": seeds}

    def _generate_wan(self, message: QueueMessage, on_step: Callable[[int, int], None], emit: Emit
                      ) -> tuple[list[np.ndarray], dict[str, Any]]:
        if self._wan is None:
            raise RuntimeError("this worker has no Wan model loaded")
        config = message.config
        prompt = message.prompt
        metadata: dict[str, Any] = {"seeds": [config.seed]}
        if config.enhance_prompt:
            if self._enhancer is None:
                raise RuntimeError("this worker has no prompt enhancer loaded")
            prompt = self._enhancer.enhance(prompt, seed=config.seed, max_new_tokens=ENHANCER_MAX_NEW_TOKENS)
            metadata["enhanced_prompt"] = prompt
            emit(Enhanced(message.id, prompt))
        video = self._wan.generate(
            prompt, None, width=config.width, height=config.height, frames=config.frame_num,
            steps=config.sample_steps, guidance=config.sample_guide_scale, shift=config.sample_shift,
            seed=config.seed, on_step=on_step,
        )
        return [video], metadata

    def _encode(self, message: QueueMessage, outputs: list[np.ndarray], metadata: dict[str, Any], work_dir: Path
                ) -> tuple[list[OutputFile], dict[str, Any]]:
        config = message.config
        files = []
        for index, frames in enumerate(outputs):
            video = config.content_type == "video/mp4"
            data = encode_mp4(frames, config.fps) if video else encode_png(frames if frames.ndim == 3 else frames[0])
            target = work_dir / f"{message.id}_{index}.{config.file_extension}"
            target.write_bytes(data)
            height, width = (frames.shape[1:3] if video else frames.shape[-3:-1])
            info: dict[str, Any] = {"width": int(width), "height": int(height), "size_bytes": len(data),
                                    "content_type": config.content_type, "seed": metadata["seeds"][index]}
            if video:
                info.update(frames=int(frames.shape[0]), fps=config.fps)
            files.append(OutputFile(str(target), "video" if video else "image", config.content_type, info))
        return files, metadata
