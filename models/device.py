"""Where the models run and in which precision (CUDA in bf16, else the CPU in float32), and the small helpers
that the pipelines share: seeded generators, progress callbacks, quiet loading."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging


def pick_device(preferred: str | None = None) -> torch.device:
    """The device to load models on: `preferred` if given, else CUDA when available, else the CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_for(device: str | torch.device) -> torch.dtype:
    """bf16 on CUDA (fast tensor cores, no fp16 overflow in VAEs); float32 on the CPU, where bf16 kernels are patchy."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def seeded_generator(device: str | torch.device, seed: int) -> torch.Generator:
    """A generator on `device`, seeded: one per output, so each output is reproducible from its own seed."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@contextlib.contextmanager
def isolated_seed(device: str | torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG for the block and restore it after.

    For APIs that take no generator (transformers' `generate`), so a seeded call neither depends on nor
    disturbs the RNG state of the rest of the process.
    """
    device = torch.device(device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide diffusers' and transformers' tqdm bars (loading, saving) for the block: a worker's log is no terminal."""
    modules = (diffusers_logging, transformers_logging)
    enabled = [module.is_progress_bar_enabled() for module in modules]
    for module in modules:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, was_enabled in zip(modules, enabled, strict=True):
            if was_enabled:
                module.enable_progress_bar()


StepCallback = Callable[[int, int], None]


def step_callback(on_step: StepCallback | None) -> Callable[..., dict[str, Any]] | None:
    """Adapt `on_step(done, total)` to diffusers' `callback_on_step_end(pipe, index, timestep, tensors)`."""
    if on_step is None:
        return None

    def callback(pipe: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(step_index + 1, pipe.num_timesteps)
        return tensors

    return callback
