"""Times the tiny random-weight models on this machine at the catalog's real output sizes; prints, asserts nothing.

    .venv/bin/python scripts/time_tiny_models.py [--root DIR] [--skip-video]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from jobs.catalog import DEFAULT_CATALOG
from models.checkpoints import build_all
from models.enhancer import PromptEnhancer
from models.sdxl import SdxlGenerator
from models.wan import WanGenerator

T = TypeVar("T")
PROMPT = "a red cat walking on a beach at sunset, cinematic, slow motion"


def timed(label: str, run: Callable[[], T]) -> T:
    """Run and print the wall time, and the CPU time of all threads (the honest figure on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    print(f"{label:<58} {time.perf_counter() - wall:7.2f} s wall {time.process_time() - cpu:8.2f} s CPU")
    return result


def time_sdxl(path: Path) -> None:
    spec = DEFAULT_CATALOG["sdxl_image_fast"]
    sdxl = timed("SDXL load", lambda: SdxlGenerator.load(path))
    images = timed(
        f"SDXL {spec.num_outputs} images {spec.width}x{spec.height}, {spec.steps} steps, CFG {spec.guidance}",
        lambda: sdxl.generate(PROMPT, None, num_images=spec.num_outputs, width=spec.width, height=spec.height,
                              steps=spec.steps, guidance=spec.guidance, seeds=list(range(spec.num_outputs))))
    print(f"  -> {len(images)} x {images[0].shape}")


def time_wan(path: Path, skip_video: bool) -> None:
    wan = timed("Wan load", lambda: WanGenerator.load(path))
    image = DEFAULT_CATALOG["image_fast"]
    frames = timed(
        f"Wan image {image.width}x{image.height}x{image.frames}, {image.steps} steps",
        lambda: wan.generate(PROMPT, None, width=image.width, height=image.height, frames=image.frames,
                             steps=image.steps, guidance=image.guidance, shift=image.shift, seed=0))
    print(f"  -> {frames.shape}")
    if skip_video:
        return
    video = DEFAULT_CATALOG["video_fast"]
    latents = timed(
        f"Wan video {video.width}x{video.height}x{video.frames}, {video.steps} steps: denoise",
        lambda: wan.denoise(PROMPT, None, width=video.width, height=video.height, frames=video.frames,
                            steps=video.steps, guidance=video.guidance, shift=video.shift, seed=0))
    frames = timed(f"Wan video {video.frames} frames: VAE decode", lambda: wan.decode(latents))
    print(f"  -> {frames.shape}")


def time_enhancer(path: Path) -> None:
    enhancer = timed("Qwen enhancer load", lambda: PromptEnhancer.load(path))
    text = timed("Qwen enhance, 160 new tokens max", lambda: enhancer.enhance(PROMPT, seed=0))
    print(f"  -> {len(text)} characters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="checkpoint folder (built if missing); default: a temp folder")
    parser.add_argument("--skip-video", action="store_true", help="skip the 81-frame video (the slow one)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or Path(scratch)
        paths = timed("build tiny checkpoints", lambda: build_all(root, "tiny"))
        time_sdxl(paths.sdxl)
        time_wan(paths.wan, args.skip_video)
        time_enhancer(paths.enhancer)


if __name__ == "__main__":
    main()
