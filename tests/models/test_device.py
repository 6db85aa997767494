"""The device helpers: device and dtype choice, progress adaptation, quiet loading."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from models.device import dtype_for, pick_device, quiet_progress_bars, seeded_generator, step_callback


def test_bf16_on_cuda_float32_on_the_cpu() -> None:
    assert dtype_for("cuda") is torch.bfloat16
    assert dtype_for(torch.device("cuda", 1)) is torch.bfloat16
    assert dtype_for("cpu") is torch.float32


def test_device_is_the_preferred_one_or_cuda_when_available() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_seeded_generators_repeat() -> None:
    first = torch.randn(4, generator=seeded_generator("cpu", 3))
    assert torch.equal(first, torch.randn(4, generator=seeded_generator("cpu", 3)))


def test_step_callback_reports_done_and_total() -> None:
    calls: list[tuple[int, int]] = []

    class Pipe:
        num_timesteps = 4

    callback = step_callback(lambda done, total: calls.append((done, total)))
    assert callback is not None
    tensors: dict[str, Any] = {"latents": None}
    assert callback(Pipe(), 0, 999, tensors) is tensors
    callback(Pipe(), 3, 1, tensors)
    assert calls == [(1, 4), (4, 4)]
    assert step_callback(None) is None


def test_progress_bars_come_back_after_loading() -> None:
    with quiet_progress_bars():
        assert not diffusers_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()
    assert diffusers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
