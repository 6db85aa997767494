"""Queue messages in the format of the `queue-job` function that ourvidz deployments ran before this API.

That function pushed `config: {size: "480*832", sample_steps, sample_guide_scale, sample_solver,
sample_shift, frame_num: 83 | 1, enhance_prompt, expected_time, content_type: "image" | "video",
file_extension}` for every job type, and no width, height, fps, image count, seed or size limit: its
workers took those from their own tables. `upgrade` fills them from the catalog, so this project's worker
runs such a message as the old workers did:
- width and height from `size` for Wan jobs; an SDXL job keeps the catalog's 1024x1024 (the old SDXL
  worker ignored `size`, which the function wrote the same for every job type);
- fps, the image count and the file size limit from the catalog;
- a random seed (the worker reports the seeds it used in the job's metadata);
- `image` / `video` become the catalog's MIME type;
- the frame count is rounded down to a length Wan accepts, 4k+1 (83 becomes 81).
A message that already has every field is returned as it is.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from jobs.catalog import DEFAULT_CATALOG, Catalog, Family, JobSpec
from jobs.messages import MAX_SEED, JobConfig, QueueMessage

FILLED = ("width", "height", "fps", "num_images", "max_file_bytes", "seed")


def is_legacy(message: dict[str, Any]) -> bool:
    config = message.get("config")
    return isinstance(config, dict) and any(name not in config for name in FILLED)


def read_message(payload: str, catalog: Catalog = DEFAULT_CATALOG) -> QueueMessage:
    """A queue message in this project's format or the old function's; pydantic's ValidationError otherwise."""
    return QueueMessage.model_validate_json(upgrade_payload(payload, catalog))


def upgrade_payload(payload: str, catalog: Catalog) -> str:
    """The payload, upgraded when it is in the old format (otherwise, or when it is not ours, unchanged)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(message, dict) or not is_legacy(message):
        return payload
    spec = catalog.get(str(message.get("type")))
    return payload if spec is None else json.dumps(upgrade(message, spec))


def upgrade(message: dict[str, Any], spec: JobSpec) -> dict[str, Any]:
    config = dict(message["config"])
    width, height = _size(config.get("size"), spec)
    config.update({"width": config.get("width", width), "height": config.get("height", height),
                   "size": f"{width}*{height}"})
    config.setdefault("fps", spec.fps)
    config.setdefault("num_images", spec.num_outputs)
    config.setdefault("max_file_bytes", spec.max_file_bytes)
    config.setdefault("seed", secrets.randbits(32) & MAX_SEED)
    config.setdefault("sample_steps", spec.steps)
    config.setdefault("sample_guide_scale", spec.guidance)
    config.setdefault("sample_shift", spec.shift)
    config.setdefault("enhance_prompt", spec.enhanced)
    config.setdefault("file_extension", spec.file_extension)
    if config.get("content_type") in ("image", "video", None):
        config["content_type"] = spec.content_type
    config["frame_num"] = _wan_length(int(config.get("frame_num", spec.frames))) if spec.family is Family.WAN else 1
    JobConfig.model_validate(config)  # everything the worker reads is there now
    return {**message, "config": config, "model_variant": message.get("model_variant") or spec.model_variant,
            "bucket": message.get("bucket") or spec.bucket}


def _size(size: object, spec: JobSpec) -> tuple[int, int]:
    if spec.family is Family.WAN and isinstance(size, str):
        width, _, height = size.partition("*")
        if width.isdigit() and height.isdigit():
            return int(width), int(height)
    return spec.width, spec.height


def _wan_length(frames: int) -> int:
    """The longest 4k+1 frame count not over `frames` (at least 1)."""
    return max(1, (frames - 1) // 4 * 4 + 1)
