"""The embedded mode from the outside: `ourvidz up` as a process, `ourvidz submit --wait` against it, a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from servers import free_port
from worker_harness import SMALL

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Real frame counts, small sizes; the video slow enough that a restart lands in the middle of it.
OVERRIDES = {**SMALL, "video_fast": {"width": 192, "height": 192, "steps": 40}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OURVIDZ_")}
    env["OURVIDZ_CATALOG_OVERRIDES"] = json.dumps(OVERRIDES)
    env["OURVIDZ_SHUTDOWN_GRACE_SECONDS"] = "0"  # Ctrl-C hands the running job back at once
    return env


@asynccontextmanager
async def ourvidz_up(data_dir: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    log = (data_dir.parent / f"up-{uuid.uuid4().hex[:6]}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ourvidz", "up", "--port", str(port), "--data-dir", str(data_dir), cwd=ROOT, env=_env(),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(1200):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, "ourvidz up exited"
                await asyncio.sleep(0.1)
        yield process
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, as in a terminal
            await asyncio.wait_for(process.wait(), 60)
        log.close()


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ourvidz", *args, cwd=ROOT, env=_env(),
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    return subprocess.CompletedProcess(args, process.returncode or 0, out.decode(), err.decode())


async def test_submit_wait_against_ourvidz_up_prints_the_six_images(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    async with ourvidz_up(data, port):
        url = f"http://127.0.0.1:{port}"
        result = await _cli("submit", "sdxl_image_fast", "a red fox", "--wait", "--api-url", url,
                            "--data-dir", str(data))
        assert result.returncode == 0, result.stdout + result.stderr
        links = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("image ")]
        assert len(links) == 6
        async with httpx.AsyncClient() as client:
            image = await client.get(links[0])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        listing = await _cli("jobs", "--api-url", url, "--data-dir", str(data))
        assert "sdxl_image_fast" in listing.stdout and "completed" in listing.stdout
    assert (data / "secrets.json").stat().st_mode & 0o077 == 0  # the instance's secrets are private


async def test_a_restart_of_ourvidz_up_during_a_video_job_completes_that_job_once(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    async with ourvidz_up(data, port) as process:
        token = (await _cli("token", "--data-dir", str(data))).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            response = await client.post("/api/queue-job", json={"jobType": "video_fast",
                                                                 "metadata": {"prompt": "waves at night"}})
            job_id = response.json()["job"]["id"]
            while (job := (await client.get(f"/api/jobs/{job_id}")).json())["status"] == "queued":
                await asyncio.sleep(0.02)
            assert job["status"] == "processing"  # claimed; the video takes seconds more
        os.killpg(process.pid, signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0

    async with ourvidz_up(data, port), httpx.AsyncClient(base_url=url, headers=headers) as client:
        for _ in range(3000):
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.1)
        balance = (await client.get("/api/assets")).json()
    assert job["status"] == "completed", job["error_message"]
    assert job["attempts"] == 2  # handed back at Ctrl-C, run again after the restart
    assert len(job["assets"]) == 1
    assert [a["job_id"] for a in balance["assets"]] == [job_id]  # one asset: completed once
