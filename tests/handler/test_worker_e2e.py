"""End to end: the API on Postgres and Redis, a worker with tiny real pipelines, all ten job types."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import av
import pytest
import sqlalchemy as sa
from harness import Api
from PIL import Image
from worker_harness import wait_for_status, worker_settings

from handler.main import run_worker
from jobs.catalog import DEFAULT_CATALOG
from jobs.tables import callback_receipts

pytestmark = pytest.mark.slow


async def _statuses_reported(api: Api, job_id: str) -> list[str]:
    query = sa.select(callback_receipts.c.response).where(callback_receipts.c.job_id == uuid.UUID(job_id))
    query = query.order_by(callback_receipts.c.created_at)
    async with api.state.engine.connect() as conn:
        return [row.response.get("status") for row in await conn.execute(query)]


def _read(api: Api, bucket: str, path: str) -> bytes:
    return (Path(api.settings.storage_dir) / bucket / path).read_bytes()


async def test_every_job_type_completes_with_its_files(small_api: Api, user: uuid.UUID, tiny_checkpoints: Path,
                                                       tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 100)
    ids = {}
    for job_type in DEFAULT_CATALOG:
        response = await api.submit(user, job_type, prompt=f"a red fox, {job_type}")
        assert response.status_code == 200, response.text
        ids[job_type] = response.json()["job"]["id"]

    stats = await run_worker(worker_settings(api, tiny_checkpoints, tmp_path / "work"), burst=True)

    assert stats.completed == 10 and stats.failed == 0
    for job_type, job_id in ids.items():
        spec = api.state.catalog[job_type]
        job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
        assert job["status"] == "completed", job["error_message"]
        reported = await _statuses_reported(api, job_id)  # the claim, progress reports, the end
        assert reported[0] == "processing" and reported[-1] == "completed" and set(reported) == {
            "processing", "completed"}
        assert job["progress"] == 100 and job["attempts"] == 1
        paths = job["metadata"]["all_assets"]
        assert job["metadata"]["primary_asset"] == paths[0]
        assert len(paths) == len(job["assets"]) == spec.num_outputs
        for path in paths:
            data = _read(api, spec.bucket, path)
            if spec.content_type == "image/png":
                image = Image.open(io.BytesIO(data))
                assert image.format == "PNG" and image.size == (spec.width, spec.height)
            else:
                with av.open(io.BytesIO(data)) as container:
                    stream = container.streams.video[0]
                    frames = sum(1 for _ in container.decode(stream))
                    assert (frames, stream.average_rate, stream.width, stream.height) == (
                        spec.frames, spec.fps, spec.width, spec.height)
        if spec.enhanced:
            assert job["metadata"]["enhanced_prompt"]
            assert job["metadata"]["enhanced_prompt"] != job["metadata"]["prompt"]
        else:
            assert "enhanced_prompt" not in job["metadata"]
        assert len(job["metadata"]["seeds"]) == spec.num_outputs


async def test_the_same_seed_gives_byte_identical_images(small_api: Api, user: uuid.UUID, tiny_checkpoints: Path,
                                                         tmp_path: Path) -> None:
    api = small_api
    await api.set_balance(user, 10)
    ids = [(await api.submit(user, "sdxl_image_fast", prompt="a lighthouse", seed=1234)).json()["job"]["id"]
           for _ in range(2)]
    other = (await api.submit(user, "sdxl_image_fast", prompt="a lighthouse", seed=99)).json()["job"]["id"]

    await run_worker(worker_settings(api, tiny_checkpoints, tmp_path / "work"), burst=True)

    files = []
    for job_id in [*ids, other]:
        job = await wait_for_status(api, user, job_id, {"completed"}, timeout=5)
        files.append([_read(api, "sdxl_image_fast", p) for p in job["metadata"]["all_assets"]])
        assert job["metadata"]["seeds"][0] in (1234, 99)
    assert files[0] == files[1]
    assert files[0] != files[2]
    assert len(set(files[0])) == 6  # each image has its own seed


async def test_a_message_in_the_old_queue_job_format_runs(api: Api, user: uuid.UUID, tiny_checkpoints: Path,
                                                          tmp_path: Path) -> None:
    """The job row is the API's; its message is what the old `queue-job` function pushed (no width, height,
    fps, image count, seed or size limit; `content_type: "image"`), LPUSHed in place of ours."""
    import json

    import redis.asyncio as aioredis

    await api.set_balance(user, 5)
    job_id = await api.submitted(user, "image_fast")
    old = {"id": job_id, "type": "image_fast", "prompt": "a red fox", "user_id": str(user),
           "created_at": "2025-07-07T21:00:00.000Z", "model_variant": "wan_2_1_1_3b", "bucket": "image_fast",
           "config": {"size": "480*832", "sample_steps": 2, "sample_guide_scale": 6.5, "sample_solver": "unipc",
                      "sample_shift": 5.0, "frame_num": 1, "enhance_prompt": False, "expected_time": 25,
                      "content_type": "image", "file_extension": "png"}, "metadata": {}}
    client = aioredis.Redis.from_url(str(api.settings.redis_url))
    try:
        await client.delete("wan_queue")
        await client.lpush("wan_queue", json.dumps(old))
    finally:
        await client.aclose()
    stats = await run_worker(worker_settings(api, tiny_checkpoints, tmp_path / "work", queues=["wan_queue"]),
                             burst=True)
    assert stats.completed == 1
    job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=5)
    assert job["status"] == "completed", job["error_message"]
    [path] = job["metadata"]["all_assets"]
    image = Image.open(io.BytesIO(_read(api, "image_fast", path)))
    assert image.size == (480, 832) and len(job["metadata"]["seeds"]) == 1  # the seed drawn is recorded
