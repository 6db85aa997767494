"""docs/production.md §5.1 (serverless), followed as written: its two environments, unchanged but for the
placeholders, run the API and `python -m handler.runpod_serverless` under runpod-python's production job
loop. RunPod (tests/fake_runpod.py) and Supabase Storage (tests/fake_supabase.py) are fakes on loopback.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_runpod import API_KEY, ENDPOINT, FakeRunPod, running_runpod
from fake_supabase import KEY, FakeSupabaseStorage, running_fake
from harness import Api, serve_api
from processes import ROOT, start_process
from worker_harness import small_settings, wait_for_status

from edge_api.settings import ApiSettings
from handler.settings import WorkerSettings

DOC = (ROOT / "docs" / "production.md").read_text()


def _env_blocks() -> list[dict[str, str]]:
    section = DOC[DOC.index("### 5.1 Serverless"):DOC.index("## 6.")]
    blocks = re.findall(r"```env\n(.*?)```", section, flags=re.S)
    return [dict(line.strip().split("=", 1) for line in block.splitlines() if line.strip()) for block in blocks]


def _substituted(env: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        for placeholder, real in values.items():
            value = value.replace(placeholder, real)
        assert "<" not in value, f"{name}={value}: a placeholder this test does not know"
        out[name] = value
    return out


def test_the_serverless_section_names_only_settings_that_exist() -> None:
    endpoint, api = _env_blocks()
    worker_fields = {f"OURVIDZ_{name.upper()}" for name in WorkerSettings.model_fields}
    api_fields = {f"OURVIDZ_{name.upper()}" for name in ApiSettings.model_fields}
    assert {n for n in endpoint if n.startswith("OURVIDZ_")} <= worker_fields
    assert set(api) <= api_fields


def test_a_production_worker_refuses_local_storage_and_the_default_api_url() -> None:
    with pytest.raises(ValueError, match="OURVIDZ_STORAGE=local"):
        WorkerSettings(environment="production", api_url="https://api.example.com", callback_secret="whsec_x")
    with pytest.raises(ValueError, match="OURVIDZ_API_URL"):
        WorkerSettings(environment="production", storage="supabase", supabase_url="https://x.supabase.co",
                       supabase_service_key="k", callback_secret="whsec_x")


@pytest.fixture
async def documented(api_settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
                     ) -> AsyncIterator[tuple[Api, FakeRunPod, FakeSupabaseStorage]]:
    _, api_env = _env_blocks()
    with running_fake() as supabase:
        async with running_runpod() as runpod:
            documented_env = _substituted(api_env, {"<endpoint id>": ENDPOINT, "<RunPod API key>": API_KEY})
            for name, value in documented_env.items():
                monkeypatch.setenv(name, value)  # read as the API reads its environment
            base = small_settings(api_settings).model_dump()
            for name in documented_env:
                base.pop(name.removeprefix("OURVIDZ_").lower())
            # Pointed at the fakes: RunPod's address is the one thing the section leaves at its default.
            settings = ApiSettings(**{**base, "runpod_api_url": f"{runpod.url}/v2", "storage": "supabase",
                                      "supabase_url": supabase.url, "supabase_service_key": KEY,
                                      "sweeper_enabled": True, "sweep_interval_seconds": 0.5})
            assert settings.runpod_endpoints == {"wan_queue": ENDPOINT}
            async for api in serve_api(settings):
                yield api, runpod, supabase


@pytest.mark.slow
async def test_the_serverless_section_followed_as_written_completes_a_job(
        documented: tuple[Api, FakeRunPod, FakeSupabaseStorage], user: uuid.UUID, tiny_checkpoints: Path,
        tmp_path: Path) -> None:
    api, runpod, supabase = documented
    endpoint_env, _ = _env_blocks()
    env = _substituted(endpoint_env, {
        "https://api.example.com": api.url, "whsec_<the API's callback secret>": api.settings.callback_secret,
        "https://<project>.supabase.co": supabase.url, "<service-role key>": KEY,
        "/runpod-volume/ourvidz/models": str(tiny_checkpoints)})
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("OURVIDZ_")}
    process_env.update(env)
    process_env.update(runpod.env())
    process_env["OURVIDZ_WORK_DIR"] = str(tmp_path / "work")
    process_env["OURVIDZ_DEVICE"] = "cpu"
    await api.set_balance(user, 5)
    proc = await start_process(["-m", "handler.runpod_serverless"], process_env, tmp_path / "endpoint.log")
    try:
        job_id = (await api.submit(user, "image_fast")).json()["job"]["id"]
        job = await wait_for_status(api, user, job_id, {"completed", "failed"}, timeout=180)
    finally:
        await proc.stop(timeout=20)
    assert job["status"] == "completed", (job["error_message"], (tmp_path / "endpoint.log").read_text()[-3000:])
    [asset] = job["assets"]
    assert (asset["bucket"], asset["path"]) in supabase.objects
    assert (await api.job_row(job_id))["dispatch_id"] in runpod.jobs
