"""The one mapping from a failure during a job to what happens to the job and the worker."""

from __future__ import annotations

import asyncio

import pytest

from handler.encoder import FileTooLarge
from handler.errors import (
    Action,
    ClaimNotAnswered,
    EncodingFailed,
    GenerationFailed,
    GenerationStopped,
    JobLost,
    ModelProcessDied,
    ModelsUnavailable,
    OutOfMemory,
    UploadFailed,
    outcome_of,
)
from handler.events import JobFailed
from handler.lifecycle import JobRun, _failure_of
from jobs.messages import QueueMessage


@pytest.mark.parametrize(("error", "action"), [
    (GenerationFailed("the pipeline raised"), Action.FAIL),
    (EncodingFailed("x264 refused"), Action.FAIL),
    (UploadFailed("storage said 400"), Action.FAIL),
    (FileTooLarge("video 1", 300, 200), Action.FAIL),
    (OutOfMemory("CUDA out of memory"), Action.HAND_BACK),
    (ModelProcessDied("exit -9"), Action.HAND_BACK),
    (GenerationStopped("stopped at step 3"), Action.HAND_BACK),
    (asyncio.CancelledError(), Action.HAND_BACK),
    (RuntimeError("a bug"), Action.HAND_BACK),
    (ClaimNotAnswered("API away"), Action.GIVE_BACK),
    (JobLost("409 Stale attempt"), Action.DROP),
    (ModelsUnavailable("cannot load"), Action.STOP_WORKER),
])
def test_each_failure_has_one_outcome(error: BaseException, action: Action) -> None:
    assert outcome_of(error).action is action


def _run() -> JobRun:
    message = QueueMessage.model_validate({
        "id": "j1", "type": "image_fast", "prompt": "p", "user_id": "u", "created_at": "2026-01-01T00:00:00Z",
        "model_variant": "wan_2_1_1_3b", "bucket": "image_fast", "config": {
            "size": "480*832", "width": 480, "height": 832, "sample_steps": 2, "sample_guide_scale": 6.5,
            "sample_shift": 5.0, "frame_num": 1, "fps": 16, "num_images": 1, "enhance_prompt": False,
            "content_type": "image/png", "file_extension": "png", "max_file_bytes": 10, "seed": 1}})
    return JobRun(message, message.model_dump_json(), None)


def test_the_model_processs_report_of_an_out_of_memory_is_a_retry_not_a_failure() -> None:
    failure = _failure_of(_run(), JobFailed("j1", "generation failed: OutOfMemoryError", kind="out_of_memory"))
    assert isinstance(failure, OutOfMemory) and outcome_of(failure).action is Action.HAND_BACK
    assert isinstance(_failure_of(_run(), JobFailed("j1", "encoding failed", kind="encoding")), EncodingFailed)
    assert isinstance(_failure_of(_run(), JobFailed("j1", "generation failed")), GenerationFailed)
