"""Messages in the old `queue-job` function's format (ourvidz, July 2025) become messages this worker runs."""

from __future__ import annotations

import json
import uuid

import pytest

from jobs.catalog import DEFAULT_CATALOG
from jobs.legacy_messages import is_legacy, upgrade_payload
from jobs.messages import MAX_SEED, QueueMessage


def old_message(job_type: str, video: bool, enhanced: bool = False, quality: str = "fast") -> dict[str, object]:
    """What the old function pushed (supabase/functions/queue-job/index.ts): the same config for every type."""
    return {
        "id": str(uuid.uuid4()), "type": job_type, "prompt": "a fox",
        "config": {"size": "480*832", "sample_steps": 50 if quality == "high" else 25,
                   "sample_guide_scale": 7.5 if quality == "high" else 6.5, "sample_solver": "unipc",
                   "sample_shift": 5.0, "frame_num": 83 if video else 1, "enhance_prompt": enhanced,
                   "expected_time": 135 if video else 25, "content_type": "video" if video else "image",
                   "file_extension": "mp4" if video else "png"},
        "user_id": str(uuid.uuid4()), "created_at": "2025-07-07T21:00:00.000Z", "video_id": None,
        "image_id": None, "character_id": None, "model_variant": "wan_2_1_1_3b", "bucket": job_type,
        "metadata": {"credits": 1},
    }


def upgraded(message: dict[str, object]) -> QueueMessage:
    return QueueMessage.model_validate_json(upgrade_payload(json.dumps(message), DEFAULT_CATALOG))


def test_an_old_video_message_gets_a_length_wan_accepts_and_the_catalogs_missing_fields() -> None:
    message = upgraded(old_message("video_fast", video=True))
    config = message.config
    assert (config.width, config.height, config.size) == (480, 832, "480*832")
    assert config.frame_num == 81  # 83 is not 4k+1
    assert (config.fps, config.num_images) == (16, 1)
    assert config.content_type == "video/mp4" and config.max_file_bytes == DEFAULT_CATALOG["video_fast"].max_file_bytes
    assert (config.sample_steps, config.sample_guide_scale) == (25, 6.5)  # what the producer asked for stays
    assert 0 <= config.seed <= MAX_SEED


def test_an_old_sdxl_message_keeps_the_sdxl_size_and_six_images() -> None:
    message = upgraded(old_message("sdxl_image_fast", video=False))
    assert (message.config.width, message.config.height, message.config.num_images) == (1024, 1024, 6)
    assert message.config.frame_num == 1 and message.config.content_type == "image/png"


def test_each_upgrade_draws_its_own_seed() -> None:
    seeds = {upgraded(old_message("image_fast", video=False)).config.seed for _ in range(20)}
    assert len(seeds) > 15


@pytest.mark.parametrize(("frames", "length"), [(83, 81), (81, 81), (97, 97), (100, 97), (1, 1), (0, 1)])
def test_frame_counts_round_down_to_4k_plus_1(frames: int, length: int) -> None:
    message = old_message("video_high", video=True, quality="high")
    message["config"]["frame_num"] = frames  # type: ignore[index]
    assert upgraded(message).config.frame_num == length


def test_a_message_in_this_projects_format_and_anything_else_pass_unchanged() -> None:
    from edge_api.enqueue import job_config

    current = json.dumps({**old_message("video_fast", video=True),
                          "config": job_config(DEFAULT_CATALOG["video_fast"], 7).model_dump()})
    assert not is_legacy(json.loads(current)) and upgrade_payload(current, DEFAULT_CATALOG) == current
    for other in ("not json", "[1, 2]", json.dumps({**old_message("flux_image", video=False)})):
        assert upgrade_payload(other, DEFAULT_CATALOG) == other
