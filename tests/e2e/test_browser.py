"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright, against the API on
Postgres and Redis and an in-process worker with tiny random-weight models.

It submits an SDXL job (watched over Server-Sent Events) and a video job (watched by polling, with
EventSource taken away), checks that the 6 images decode and the video plays, and deletes an asset in the
library. Screenshots go to the test's folder and to `test-output/` at the repository root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import Api
from worker_harness import worker_settings

from handler.main import open_worker

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO_OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
JOB_SECONDS = 240_000  # milliseconds Playwright waits for a job: tiny models on a CPU, 81 video frames


def chromium_or_skip() -> Path:
    """Debian's Chromium (Playwright's own browser builds cannot be downloaded here); installed if missing."""
    if not CHROMIUM.exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=300, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=True, timeout=600,
                           capture_output=True)
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (apt-get install chromium)")
    return CHROMIUM


@contextlib.asynccontextmanager
async def running_worker(api: Api, checkpoints: Path, work_dir: Path) -> AsyncIterator[None]:
    async with open_worker(worker_settings(api, checkpoints, work_dir)) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.request_stop()
            await task


class Shots:
    """Screenshots, saved in the test's folder and copied to `test-output/` for people to look at."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[Path] = []

    async def take(self, page: Any, name: str) -> None:
        path = self.folder / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        REPO_OUTPUT.mkdir(exist_ok=True)
        shutil.copy(path, REPO_OUTPUT / path.name)


async def wait_for_job(page: Any) -> None:
    await page.wait_for_selector("#job-badge[data-status='completed'], #job-badge[data-status='failed']",
                                 timeout=JOB_SECONDS)
    assert await page.get_attribute("#job-badge", "data-status") == "completed", await page.inner_text("#job-error")


async def submit(page: Any, job_type: str, prompt: str) -> str:
    """Fill in and send the form; returns the new job's id once the page shows it."""
    before = await page.get_attribute("#result", "data-job-id")
    await page.select_option("#job-type", job_type)
    await page.fill("#prompt", prompt)
    await page.click("#submit")
    await page.wait_for_function("(before) => (document.querySelector('#result').dataset.jobId ?? null) !== before",
                                 arg=before)
    job_id = await page.get_attribute("#result", "data-job-id")
    assert job_id
    return job_id


async def test_the_page_submits_watches_shows_and_deletes(small_api: Api, user: uuid.UUID, tiny_checkpoints: Path,
                                                          tmp_path: Path) -> None:
    async_api = pytest.importorskip("playwright.async_api", reason="the playwright package is a dev dependency")
    executable = chromium_or_skip()
    api = small_api
    await api.set_balance(user, 100)
    shots = Shots(tmp_path)
    problems: list[str] = []
    requests: list[str] = []

    async with running_worker(api, tiny_checkpoints, tmp_path / "work"), async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
            page = await context.new_page()
            # Console errors include Content-Security-Policy violations: the page must cause none.
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))

            await page.goto(f"{api.url}/#token={api.token(user)}")
            await page.wait_for_selector("body[data-ready='true']")
            assert "#token" not in page.url  # taken out of the address bar, kept in localStorage
            assert await page.is_visible("#app") and not await page.is_visible("#sign-in")
            await page.wait_for_function("document.querySelector('#balance-value').textContent === '100'")
            assert await page.locator("#job-type option").count() == 10
            await shots.take(page, "01-signed-in")

            # SDXL: a negative prompt, 6 images, watched over Server-Sent Events.
            await page.select_option("#job-type", "sdxl_image_fast")
            assert await page.is_visible("#negative-prompt")
            assert "credit" in await page.inner_text("#job-type-info")
            await page.fill("#negative-prompt", "blurry")
            await submit(page, "sdxl_image_fast", "a red fox in the snow")
            await wait_for_job(page)
            images = page.locator("#job-output img")
            assert await images.count() == 6
            await page.wait_for_function(
                "[...document.querySelectorAll('#job-output img')].every(i => i.complete && i.naturalWidth > 0)")
            widths = await images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            assert widths == [api.state.catalog["sdxl_image_fast"].width] * 6
            assert any("/events?access_token=" in url for url in requests)
            assert await page.inner_text("#balance-value") == "99"
            await shots.take(page, "02-sdxl-completed")

            # The video, with EventSource taken away: the page falls back to polling GET /api/jobs/{id}.
            await context.add_init_script("delete window.EventSource;")
            await page.reload()
            await page.wait_for_selector("body[data-ready='true']")
            await page.select_option("#job-type", "video_fast")
            assert not await page.is_visible("#negative-prompt")  # SDXL only
            requests.clear()
            job_id = await submit(page, "video_fast", "waves rolling onto a beach")
            await wait_for_job(page)
            assert not any("/events" in url for url in requests)
            assert f"{api.url}/api/jobs/{job_id}" in requests
            video = page.locator("#job-output video")
            assert await video.count() == 1 and await page.locator("#job-output img").count() == 0
            h264 = await video.evaluate("v => v.canPlayType('video/mp4; codecs=\"avc1.42E01E\"')")
            assert h264 in ("maybe", "probably"), "this Chromium cannot play H.264"
            await page.wait_for_function("document.querySelector('#job-output video').readyState >= 1",
                                         timeout=20_000)
            spec = api.state.catalog["video_fast"]
            facts = await video.evaluate("v => [v.duration, v.videoWidth, v.videoHeight]")
            assert facts[0] == pytest.approx(spec.frames / spec.fps, abs=0.1)
            assert facts[1:] == [spec.width, spec.height]
            await video.evaluate("v => { v.muted = true; return v.play(); }")
            await page.wait_for_function("document.querySelector('#job-output video').currentTime > 0.2",
                                         timeout=20_000)
            await video.evaluate("v => v.pause()")
            await shots.take(page, "03-video-completed")

            # The library: 6 images and 1 video, filtered, then one image deleted.
            cards = page.locator("#assets > li")
            await page.wait_for_function("document.querySelectorAll('#assets > li').length === 7")
            await page.select_option("#kind-filter", "video")
            await page.wait_for_function("document.querySelectorAll('#assets > li').length === 1")
            assert await cards.first.get_attribute("data-kind") == "video"
            await page.select_option("#kind-filter", "")
            await page.wait_for_function("document.querySelectorAll('#assets > li').length === 7")
            await page.wait_for_function(
                "[...document.querySelectorAll('#assets img')].every(i => i.complete && i.naturalWidth > 0)")
            await shots.take(page, "04-library")
            victim = cards.filter(has=page.locator("img")).first
            asset_id = await victim.get_attribute("data-asset-id")
            assert asset_id
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await victim.get_by_role("button", name="Delete").click()
            await page.wait_for_function("document.querySelectorAll('#assets > li').length === 6")
            assert await page.locator(f"#assets > li[data-asset-id='{asset_id}']").count() == 0
            assert "Deleted" in await page.inner_text("#library-status")
            gone = await api.client.delete(f"/api/assets/{asset_id}", headers=api.auth(user))
            assert gone.status_code == 404
            listed = (await api.client.get("/api/assets", headers=api.auth(user))).json()["assets"]
            assert asset_id not in {a["id"] for a in listed} and len(listed) == 6

            # The same page on a phone.
            phone = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                              is_mobile=True, has_touch=True)
            mobile = await phone.new_page()
            await mobile.goto(f"{api.url}/#token={api.token(user)}")
            await mobile.wait_for_selector("body[data-ready='true']")
            await mobile.wait_for_function(
                "[...document.querySelectorAll('#job-output video')].every(v => v.readyState >= 1)")
            width = await mobile.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, "the page scrolls sideways on a phone"
            await shots.take(mobile, "05-phone")
            await phone.close()
        finally:
            await browser.close()

    assert problems == []
