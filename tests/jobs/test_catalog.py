"""The catalog: ten job types with the reference's values, immutable, tunable only through overrides."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.catalog import DEFAULT_CATALOG, MB, QUEUES, SDXL_QUEUE, TUNABLE, WAN_QUEUE, Catalog, Family, OutputKind

# job type: (queue, outputs, kind, width, height, frames, enhanced, bucket limit in MB), from the reference.
TABLE = {
    "sdxl_image_fast": (SDXL_QUEUE, 6, "image", 1024, 1024, 1, False, 5),
    "sdxl_image_high": (SDXL_QUEUE, 6, "image", 1024, 1024, 1, False, 10),
    "image_fast": (WAN_QUEUE, 1, "image", 480, 832, 1, False, 5),
    "image_high": (WAN_QUEUE, 1, "image", 480, 832, 1, False, 10),
    "video_fast": (WAN_QUEUE, 1, "video", 480, 832, 81, False, 50),
    "video_high": (WAN_QUEUE, 1, "video", 480, 832, 97, False, 200),
    "image7b_fast_enhanced": (WAN_QUEUE, 1, "image", 480, 832, 1, True, 20),
    "image7b_high_enhanced": (WAN_QUEUE, 1, "image", 480, 832, 1, True, 20),
    "video7b_fast_enhanced": (WAN_QUEUE, 1, "video", 480, 832, 81, True, 100),
    "video7b_high_enhanced": (WAN_QUEUE, 1, "video", 480, 832, 97, True, 100),
}


def test_catalog_has_exactly_the_ten_reference_job_types() -> None:
    assert len(DEFAULT_CATALOG) == 10
    assert DEFAULT_CATALOG.job_types == list(TABLE)
    assert QUEUES == ("sdxl_queue", "wan_queue")


@pytest.mark.parametrize("job_type", list(TABLE))
def test_record_matches_the_design_table(job_type: str) -> None:
    queue, outputs, kind, width, height, frames, enhanced, limit_mb = TABLE[job_type]
    spec = DEFAULT_CATALOG[job_type]
    assert spec.job_type == job_type
    assert spec.queue == queue
    assert spec.num_outputs == outputs
    assert spec.output == OutputKind(kind)
    assert (spec.width, spec.height) == (width, height)
    assert spec.size == f"{width}*{height}"
    assert spec.frames == frames
    assert spec.enhanced is enhanced
    assert spec.max_file_bytes == limit_mb * MB
    assert spec.bucket == job_type
    assert spec.quality.value == ("fast" if "fast" in job_type else "high")


@pytest.mark.parametrize("job_type", list(TABLE))
def test_family_decides_model_variant_and_negative_prompt(job_type: str) -> None:
    spec = DEFAULT_CATALOG[job_type]
    sdxl = job_type.startswith("sdxl_")
    assert spec.family is (Family.SDXL if sdxl else Family.WAN)
    assert spec.is_sdxl is sdxl
    assert spec.model_variant == ("lustify_sdxl" if sdxl else "wan_2_1_1_3b")
    assert spec.negative_prompt_supported is sdxl


@pytest.mark.parametrize("job_type", list(TABLE))
def test_file_format_follows_the_output_kind(job_type: str) -> None:
    spec = DEFAULT_CATALOG[job_type]
    video = spec.output is OutputKind.VIDEO
    assert spec.content_type == ("video/mp4" if video else "image/png")
    assert spec.file_extension == ("mp4" if video else "png")


def test_videos_run_at_16_fps_for_5_and_6_seconds() -> None:
    for job_type in ("video_fast", "video7b_fast_enhanced", "video_high", "video7b_high_enhanced"):
        spec = DEFAULT_CATALOG[job_type]
        assert spec.fps == 16
        assert round(spec.frames / spec.fps) == (5 if "fast" in job_type else 6)


def test_high_quality_takes_more_steps_than_fast() -> None:
    for fast in ("sdxl_image_fast", "image_fast", "video_fast", "image7b_fast_enhanced", "video7b_fast_enhanced"):
        high = DEFAULT_CATALOG[fast.replace("fast", "high")]
        assert high.steps > DEFAULT_CATALOG[fast].steps
    wan = DEFAULT_CATALOG["video_fast"], DEFAULT_CATALOG["video_high"]
    assert (wan[0].steps, wan[1].steps) == (25, 50)


def test_every_job_type_has_a_positive_price_and_reference_time() -> None:
    for spec in DEFAULT_CATALOG.values():
        assert spec.price >= 1
        assert spec.reference_seconds > 0
    assert DEFAULT_CATALOG["sdxl_image_fast"].price == 1


def test_records_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_CATALOG["video_fast"].frames = 3  # type: ignore[misc]


def test_override_for_one_type_leaves_the_others_and_the_default_alone() -> None:
    tuned = DEFAULT_CATALOG.with_overrides({"video_fast": {"frames": 9, "steps": 2}})
    assert (tuned["video_fast"].frames, tuned["video_fast"].steps) == (9, 2)
    assert tuned["video_high"] == DEFAULT_CATALOG["video_high"]
    assert DEFAULT_CATALOG["video_fast"].frames == 81
    assert isinstance(tuned, Catalog) and tuned.job_types == DEFAULT_CATALOG.job_types


def test_star_override_applies_to_all_and_a_specific_one_wins() -> None:
    tuned = DEFAULT_CATALOG.with_overrides({"*": {"width": 64, "height": 64}, "image_fast": {"width": 32}})
    assert all(spec.height == 64 for spec in tuned.values())
    assert tuned["image_fast"].size == "32*64"
    assert tuned["sdxl_image_high"].size == "64*64"


def test_override_of_a_field_that_is_not_tunable_is_refused() -> None:
    assert "queue" not in TUNABLE and "job_type" not in TUNABLE
    with pytest.raises(ValueError, match="not tunable"):
        DEFAULT_CATALOG.with_overrides({"video_fast": {"enhanced": True}})
    with pytest.raises(ValueError, match="not tunable"):
        DEFAULT_CATALOG.with_overrides({"*": {"family": "wan"}})


def test_override_of_an_unknown_job_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown job types"):
        DEFAULT_CATALOG.with_overrides({"video_ultra": {"steps": 1}})


def test_a_fast_job_is_never_expected_to_take_longer_than_its_high_quality_twin() -> None:
    for spec in DEFAULT_CATALOG.values():
        twins = [t for t in DEFAULT_CATALOG.values() if t.quality != spec.quality and t.family == spec.family
                 and t.output == spec.output and t.enhanced == spec.enhanced]
        for twin in twins:
            fast, high = (spec, twin) if spec.quality.value == "fast" else (twin, spec)
            assert DEFAULT_CATALOG.expected_seconds(fast.job_type) <= DEFAULT_CATALOG.expected_seconds(high.job_type)
    # The reference's own figures stay as measured, for the benchmarks.
    assert DEFAULT_CATALOG["image7b_fast_enhanced"].reference_seconds == 233.5
    assert DEFAULT_CATALOG.expected_seconds("image7b_fast_enhanced") == 104.0
    assert DEFAULT_CATALOG.expected_seconds("video_fast") == DEFAULT_CATALOG["video_fast"].reference_seconds
