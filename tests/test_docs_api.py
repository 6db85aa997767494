"""docs/api.md documents exactly the routes of the OpenAPI schema, each with a curl example."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from harness import Api, serve_api

from edge_api.app import create_app
from edge_api.settings import ApiSettings
from jobs.webhooks import new_secret

DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def _schema_routes() -> set[str]:
    schema = create_app(ApiSettings()).openapi()
    return {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}


def _documented_routes() -> set[str]:
    routes = set()
    for heading in re.findall(r"^### (.+)$", DOC, flags=re.MULTILINE):
        routes.update(re.findall(r"`(GET|POST|DELETE|PUT|PATCH) (/[^`]*)`", heading))
    return {f"{method} {path}" for method, path in routes}


def test_every_route_of_the_schema_is_documented_and_nothing_else() -> None:
    assert _documented_routes() == _schema_routes()


def test_every_documented_route_has_a_curl_example() -> None:
    sections = re.split(r"^### ", DOC, flags=re.MULTILINE)[1:]
    for section in sections:
        assert "curl " in section, f"no curl example under {section.splitlines()[0]}"


# --- Every example, run as written against a live API and worker -----------------------------------------

def shell_blocks() -> list[tuple[str, str]]:
    """(the heading it is under, the block) for every ```bash block of the page, in order."""
    blocks = []
    for section in re.split(r"^#+ ", DOC, flags=re.MULTILINE)[1:]:
        heading = section.splitlines()[0]
        blocks += [(heading, block) for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)]
    return blocks


@pytest.mark.slow
async def test_every_shell_example_runs_as_written_against_a_live_instance(
        api_settings: ApiSettings, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    from worker_harness import small_settings

    settings = small_settings(api_settings).model_copy(update={"webhook_secret": new_secret()})
    async for api in serve_api(settings):
        await _run_examples(api, user, tiny_checkpoints, tmp_path)


async def _run_examples(api: Api, user: uuid.UUID, tiny_checkpoints: Path, tmp_path: Path) -> None:
    await api.set_balance(user, 100)
    env = {**os.environ, "API": api.url, "TOKEN": api.token(user), "USER_ID": str(user),
           "CALLBACK_SECRET": api.settings.callback_secret}
    blocks = shell_blocks()
    assert len(blocks) >= len(_schema_routes()) - 3  # one per route at least (health routes share one)
    worker = asyncio.create_task(_run_worker(api, tiny_checkpoints, tmp_path))
    ran = []
    try:
        for heading, block in blocks:
            await _prepare(api, user, heading, env, worker)
            result = await asyncio.to_thread(subprocess.run, ["bash", "-euo", "pipefail", "-c", block], env=env,
                                             capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{heading}: {result.stderr}"
            _check_answer(heading, block, result.stdout)
            if heading == "`POST /api/queue-job`" and "JOB" not in env:
                env["JOB"] = json.loads(result.stdout)["job"]["id"]
            ran.append(heading)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert len(ran) == len(blocks)


async def _run_worker(api: Api, checkpoints: Path, work_dir: Path) -> None:
    from worker_harness import worker_settings

    from handler.main import open_worker

    async with open_worker(worker_settings(api, checkpoints, work_dir)) as worker:
        try:
            await worker.run()
        finally:
            worker.request_stop()


async def _prepare(api: Api, user: uuid.UUID, heading: str, env: dict[str, str], worker: asyncio.Task[None]) -> None:
    """What each example needs from the ones before it: a finished job, one to cancel, one to report on."""
    if heading == "`GET /api/jobs/{job_id}`":  # the first example's job, run by the worker to its end
        for _ in range(1200):
            job = (await api.client.get(f"/api/jobs/{env['JOB']}", headers=api.auth(user))).json()
            if job["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["status"] == "completed", job
        env["ASSET"] = job["assets"][0]["id"]
    if heading == "`POST /api/jobs/{job_id}/cancel`":  # a queued job: the worker is stopped from here on
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        env["JOB"] = await api.submitted(user, "image_fast")
    if heading == "`POST /api/job-callback`":  # a job a worker has claimed, with its file in the bucket
        env["JOB"] = await api.submitted(user, "image_fast")
        assert (await api.claim(env["JOB"])).status_code == 200
        await api.state.storage.upload("image_fast", f"{user}/{env['JOB']}_0.png", b"\x89PNG example", "image/png")


def _check_answer(heading: str, block: str, out: str) -> None:
    if "/events" in block:  # Server-Sent Events, until the job ended
        assert "event: job" in out and '"status":"completed"' in out, out[-500:]
        return
    if "/readyz" in block:
        assert json.loads(out).get("ready", True) is not False, out
        return
    body = json.loads(out)
    if isinstance(body, dict) and body.get("success") is False:
        # The one example that names a host of the reader's (app.example.com): with no network here it cannot
        # resolve, and the API says so in its envelope instead of accepting a URL it could never check.
        assert heading == "Webhooks" and "does not resolve" in body["details"], (heading, body)
