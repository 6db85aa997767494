"""Wan generation: video and image shapes, seeds, progress, shift changes, cached negatives, input checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from models.wan import WanGenerator

PROMPT = "a red cat walking on a beach at sunset"


def _generate(wan: WanGenerator, **overrides: Any) -> np.ndarray:
    arguments: dict[str, Any] = {"width": 64, "height": 48, "frames": 9, "steps": 2, "guidance": 6.0,
                                 "shift": 5.0, "seed": 0}
    arguments.update(overrides)
    return wan.generate(PROMPT, None, **arguments)


@pytest.fixture
def text_encoder_runs(wan: WanGenerator) -> Iterator[list[int]]:
    """How many times UMT5 ran, as a list that grows by one per forward pass."""
    runs: list[int] = []
    handle = wan.pipe.text_encoder.register_forward_hook(lambda *_: runs.append(1))
    yield runs
    handle.remove()


@pytest.mark.parametrize(("width", "height", "frames"), [(64, 64, 9), (64, 48, 9), (64, 64, 1), (48, 32, 5)])
def test_video_is_frames_by_height_by_width_by_rgb(wan: WanGenerator, width: int, height: int, frames: int) -> None:
    video = _generate(wan, width=width, height=height, frames=frames)
    assert video.shape == (frames, height, width, 3)
    assert video.dtype == np.uint8


def test_same_seed_gives_the_same_bytes_and_another_seed_another_video(wan: WanGenerator) -> None:
    first = _generate(wan, seed=7)
    assert first.tobytes() == _generate(wan, seed=7).tobytes()
    assert not np.array_equal(first, _generate(wan, seed=8))


def test_progress_is_reported_once_per_step(wan: WanGenerator) -> None:
    calls: list[tuple[int, int]] = []
    _generate(wan, steps=3, on_step=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_shift_rebuilds_the_scheduler_only_when_it_changes(wan: WanGenerator) -> None:
    at_five = _generate(wan, shift=5.0, seed=3)
    scheduler = wan.pipe.scheduler
    _generate(wan, shift=5.0, seed=3)
    assert wan.pipe.scheduler is scheduler
    at_three = _generate(wan, shift=3.0, seed=3)
    assert wan.pipe.scheduler is not scheduler
    assert wan.pipe.scheduler.config.flow_shift == 3.0
    assert not np.array_equal(at_five, at_three)


def test_negative_prompt_is_encoded_once(wan: WanGenerator, text_encoder_runs: list[int]) -> None:
    negative = "a negative prompt used by this test only"
    wan.generate(PROMPT, negative, width=64, height=64, frames=1, steps=1, guidance=6.0, shift=5.0, seed=0)
    assert len(text_encoder_runs) == 2  # the prompt and the new negative prompt
    wan.generate(PROMPT, negative, width=64, height=64, frames=1, steps=1, guidance=6.0, shift=5.0, seed=0)
    assert len(text_encoder_runs) == 3  # the prompt only


def test_no_guidance_needs_no_negative_prompt(wan: WanGenerator, text_encoder_runs: list[int]) -> None:
    wan.generate(PROMPT, "never encoded", width=64, height=64, frames=1, steps=1, guidance=1.0, shift=5.0, seed=0)
    assert len(text_encoder_runs) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"frames": 8}, "`frames` must be 4k\\+1 .*, got 8"),
        ({"frames": 0}, "`frames` must be 4k\\+1 .*, got 0"),
        ({"width": 70}, "`width` must be a positive multiple of 16, got 70"),
        ({"height": -16}, "`height` must be a positive multiple of 16, got -16"),
        ({"steps": 0}, "`steps` must be at least 1, got 0"),
        ({"shift": 0.0}, "`shift` must be > 0, got 0.0"),
    ],
)
def test_bad_inputs_are_named(wan: WanGenerator, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _generate(wan, **overrides)


def test_empty_prompt_is_refused(wan: WanGenerator) -> None:
    with pytest.raises(ValueError, match="`prompt` must be a non-empty string"):
        wan.generate("  ", None, width=64, height=64, frames=1, steps=1, guidance=6.0, shift=5.0, seed=0)
