"""The job runner on its own: a queue message in, encoded files out, with the SDXL of a single file too."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from edge_api.enqueue import job_config
from handler.events import ChildEvent, Generated, Progress
from handler.runner import JobRunner, ModelPaths
from jobs.catalog import DEFAULT_CATALOG, SDXL_QUEUE
from jobs.messages import QueueMessage
from models.checkpoints import build_sdxl_single_file

pytestmark = pytest.mark.slow


def _message(job_type: str, seed: int = 7) -> QueueMessage:
    spec = DEFAULT_CATALOG.with_overrides({job_type: {"width": 64, "height": 64, "steps": 2}})[job_type]
    return QueueMessage(id=f"job-{seed}", type=job_type, prompt="a lighthouse", user_id="u",
                        created_at=datetime.now(UTC), model_variant=spec.model_variant, bucket=spec.bucket,
                        config=job_config(spec, seed))


def test_a_single_file_sdxl_runs_a_job_like_the_folder_one(tiny_checkpoints: Path, tmp_path: Path) -> None:
    single = build_sdxl_single_file(tmp_path / "lustify.safetensors", "tiny")
    runner = JobRunner(ModelPaths(sdxl=single, wan=None, enhancer=None, sdxl_config=tiny_checkpoints / "sdxl"),
                       [SDXL_QUEUE], "cpu")
    events: list[ChildEvent] = []
    try:
        files, metadata = runner.run(_message("sdxl_image_fast"), tmp_path / "work", events.append).result()
    finally:
        runner.close()
    assert len(files) == 6 and metadata["seeds"] == [7 + i for i in range(6)]
    assert all(Image.open(io.BytesIO(Path(f.path).read_bytes())).size == (64, 64) for f in files)
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2]
    assert isinstance(events[-1], Generated)


def test_a_missing_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no SDXL checkpoint at .*nowhere"):
        JobRunner(ModelPaths(sdxl=tmp_path / "nowhere", wan=None, enhancer=None), [SDXL_QUEUE], "cpu")
