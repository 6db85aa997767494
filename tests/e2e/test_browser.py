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
# Predicates for `until`, each of one argument: a selector, or [selector, count].
DECODED = "(sel) => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)"
LOADED = "(sel) => [...document.querySelectorAll(sel)].every(v => v.readyState >= 1)"
SHOWN = "(sel) => [...document.querySelectorAll(sel)].every(v => v.readyState >= 2)"  # a frame to show
COUNT = "([sel, n]) => document.querySelectorAll(sel).length === n"
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


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async_api = pytest.importorskip("playwright.async_api", reason="the playwright package is a dev dependency")
    executable = chromium_or_skip()
    async with async_api.async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """A page with what it did recorded: console errors (CSP violations among them), script errors, requests."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def problems(self) -> list[str]:
        # A refused request (401, 402) is logged by the browser too; that is the test's doing, not the page's.
        return [m for m in self.console_errors if not m.startswith("Failed to load resource")]


async def open_page(browser: Any, url: str, **options: Any) -> Watched:
    context = await browser.new_context(**{"viewport": {"width": 1280, "height": 900}, "locale": "en-GB", **options})
    watched = Watched(await context.new_page())
    await watched.page.goto(url)
    await watched.page.wait_for_selector("body[data-ready='true']")
    return watched


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


async def until(page: Any, predicate: str, arg: Any = None, timeout: float = 30.0) -> None:
    """Poll a JavaScript function from here. Playwright's `wait_for_function` polls inside the page with
    `eval`, which the page's Content-Security-Policy (rightly) forbids; `evaluate` is not subject to it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(predicate, arg):
        if loop.time() > deadline:
            raise AssertionError(f"still false after {timeout} s: {predicate}")
        await asyncio.sleep(0.05)


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
    await until(page, "(before) => (document.querySelector('#result').dataset.jobId ?? null) !== before", before)
    job_id = await page.get_attribute("#result", "data-job-id")
    assert job_id
    return job_id


async def test_the_page_submits_watches_shows_and_deletes(small_api: Api, user: uuid.UUID, tiny_checkpoints: Path,
                                                          tmp_path: Path, browser: Any) -> None:
    api = small_api
    await api.set_balance(user, 100)
    shots = Shots(tmp_path)

    async with running_worker(api, tiny_checkpoints, tmp_path / "work"):
        watched = await open_page(browser, f"{api.url}/#token={api.token(user)}")
        page, requests = watched.page, watched.requests
        assert "#token" not in page.url  # taken out of the address bar, kept in localStorage
        assert await page.is_visible("#app") and not await page.is_visible("#sign-in")
        await until(page, "() => document.querySelector('#balance-value').textContent === '100'")
        assert await page.locator("#job-type option").count() == 10
        assert await page.is_visible("#result-empty")
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
        await until(page, DECODED, "#job-output img")
        widths = await images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert widths == [api.state.catalog["sdxl_image_fast"].width] * 6
        assert any("/events?access_token=" in url for url in requests)
        assert await page.inner_text("#balance-value") == "99"
        await shots.take(page, "02-sdxl-completed")

        # The video, with EventSource taken away: the page falls back to polling GET /api/jobs/{id}.
        await page.context.add_init_script("delete window.EventSource;")
        await page.reload()
        await page.wait_for_selector("body[data-ready='true']")
        await page.wait_for_selector("#job-badge[data-status='completed']")  # the last job, shown again
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
        await until(page, LOADED, "#job-output video")
        spec = api.state.catalog["video_fast"]
        facts = await video.evaluate("v => [v.duration, v.videoWidth, v.videoHeight]")
        assert facts[0] == pytest.approx(spec.frames / spec.fps, abs=0.1)
        assert facts[1:] == [spec.width, spec.height]
        await video.evaluate("v => { v.muted = true; return v.play(); }")
        await until(page, "() => document.querySelector('#job-output video').currentTime > 0.2")
        await video.evaluate("v => v.pause()")
        await shots.take(page, "03-video-completed")

        # The library: one card per job (the 6 images together, the video), filtered, then one image deleted.
        cards = page.locator("#assets > li")
        await until(page, COUNT, ["#assets > li", 2])
        await until(page, COUNT, ["#assets > li.group figure.file", 6])
        await page.select_option("#kind-filter", "video")
        await until(page, COUNT, ["#assets > li", 1])
        assert await cards.first.get_attribute("data-kind") == "video"
        await page.select_option("#kind-filter", "")
        await until(page, COUNT, ["#assets figure.file", 7])
        await until(page, DECODED, "#assets img")
        await until(page, SHOWN, "#assets video")
        await shots.take(page, "04-library")
        victim = page.locator("#assets figure.file").filter(has=page.locator("img")).first
        asset_id = await victim.get_attribute("data-asset-id")
        assert asset_id
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await victim.get_by_role("button", name="Delete").click()
        await until(page, COUNT, ["#assets figure.file", 6])
        await until(page, COUNT, ["#assets > li", 2])  # the job's card stays, with its five other images
        assert await page.locator(f"#assets figure[data-asset-id='{asset_id}']").count() == 0
        assert "Deleted" in await page.inner_text("#library-status")
        gone = await api.client.delete(f"/api/assets/{asset_id}", headers=api.auth(user))
        assert gone.status_code == 404
        listed = (await api.client.get("/api/assets", headers=api.auth(user))).json()["assets"]
        assert asset_id not in {a["id"] for a in listed} and len(listed) == 6
        assert watched.problems() == []

        # The same page on a phone, in dark mode: it shows the latest job and never scrolls sideways.
        phone = await open_page(browser, f"{api.url}/#token={api.token(user)}", viewport={"width": 390, "height": 844},
                                device_scale_factor=2, is_mobile=True, has_touch=True, color_scheme="dark")
        await until(phone.page, COUNT, ["#job-output video", 1])
        await until(phone.page, SHOWN, "video")
        assert await phone.page.evaluate("document.documentElement.scrollWidth") <= 390
        await shots.take(phone.page, "05-phone")
        assert phone.problems() == []


async def test_the_page_signs_in_shows_progress_and_errors(api: Api, user: uuid.UUID, tmp_path: Path,
                                                           browser: Any) -> None:
    shots = Shots(tmp_path)
    await api.set_balance(user, 1)
    watched = await open_page(browser, f"{api.url}/")
    page = watched.page
    assert await page.is_visible("#sign-in") and not await page.is_visible("#app")
    await shots.take(page, "06-sign-in")

    # A token the API refuses: the envelope's error and suggested action are shown.
    await page.fill("#token-input", "not-a-token")
    await page.click("#token-form button[type=submit]")
    await page.wait_for_selector("#token-error:not([hidden])")
    assert "Authentication failed" in await page.inner_text("#token-error")
    assert "Sign in again" in await page.inner_text("#token-error")

    await page.fill("#token-input", api.token(user))
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")  # the form is usable from the keyboard
    await page.wait_for_selector("#app:not([hidden])")
    await until(page, "() => document.querySelector('#balance-value').textContent === '1'")

    # No worker here: the test plays the worker with signed callbacks, and the page follows over SSE.
    job_id = await submit(page, "sdxl_image_fast", "a lighthouse at dusk")
    await page.wait_for_selector("#job-badge[data-status='queued']")
    assert "Queued" in await page.inner_text("#job-status")
    await shots.take(page, "07-queued")
    assert (await api.claim(job_id)).status_code == 200
    report = {"job_id": job_id, "status": "processing", "progress": 45, "attempt": 1}
    assert (await api.callback(report)).status_code == 200
    await until(page, "() => document.querySelector('#job-progress').value === 45")
    assert await page.inner_text("#job-percent") == "45%"
    await shots.take(page, "08-processing")

    # Out of credits: 402, in the reference's envelope.
    await page.fill("#prompt", "another one")
    await page.click("#submit")
    await page.wait_for_selector("#form-error:not([hidden])")
    assert "credit" in (await page.inner_text("#form-error")).lower()

    failed = {"job_id": job_id, "status": "failed", "error_message": "CUDA out of memory", "attempt": 1}
    assert (await api.callback(failed)).status_code == 200
    await page.wait_for_selector("#job-badge[data-status='failed']")
    assert "CUDA out of memory" in await page.inner_text("#job-error")
    await until(page, "() => document.querySelector('#balance-value').textContent === '1'")  # refunded
    await shots.take(page, "09-failed")
    assert watched.problems() == []


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .opblock"), ("/redoc", "[id^='operation/']")])
async def test_the_api_docs_render_with_the_network_cut_off(api: Api, browser: Any, path: str, rendered: str) -> None:
    context = await browser.new_context()
    elsewhere: list[str] = []

    async def only_the_api(route: Any) -> None:
        if route.request.url.startswith(api.url):
            await route.continue_()
        else:  # the network beyond this API is cut off: a CDN's script would never arrive
            # ReDoc's bundle shows its maker's logo from their CDN: an image, the one thing that may fail.
            if not (path == "/redoc" and route.request.resource_type == "image"):
                elsewhere.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_the_api)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(api.url + path)
    await page.wait_for_selector(rendered, timeout=30_000)
    assert await page.locator(rendered).count() >= 10  # every operation of the schema is listed
    assert elsewhere == [] and errors == []
    await context.close()


async def test_a_token_link_opened_in_a_tab_already_on_the_page_signs_in_without_a_reload(
        api: Api, user: uuid.UUID, browser: Any) -> None:
    await api.set_balance(user, 3)
    watched = await open_page(browser, f"{api.url}/")
    page = watched.page
    assert await page.is_visible("#sign-in")
    await page.evaluate("(token) => { location.hash = `token=${token}`; }", api.token(user))
    await page.wait_for_selector("#app:not([hidden])")
    await until(page, "() => document.querySelector('#balance-value').textContent === '3'")
    assert "token" not in await page.evaluate("location.href")  # out of the address bar again
    assert watched.problems() == []


async def test_a_page_on_another_origin_submits_and_reads_a_job(api: Api, user: uuid.UUID, browser: Any) -> None:
    from harness import serve_asgi
    from starlette.responses import HTMLResponse

    await api.set_balance(user, 5)
    page_html = HTMLResponse("<!doctype html><title>another app</title><p>app</p>")

    async def other_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await page_html(scope, receive, send)

    async with serve_asgi(other_app) as other_url:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(other_url)
        # What supabase-js sends with functions.invoke, plus an Idempotency-Key: a preflighted request.
        result = await page.evaluate("""async ([api, token]) => {
            const headers = {"Authorization": `Bearer ${token}`, "apikey": "anon-key", "x-client-info": "supabase-js/2",
                             "Content-Type": "application/json", "Idempotency-Key": "cross-origin-1"};
            const body = JSON.stringify({jobType: "sdxl_image_fast", metadata: {prompt: "a fox"}});
            const made = await fetch(`${api}/functions/v1/queue-job`, {method: "POST", headers, body});
            const job = (await made.json()).job;
            const read = await fetch(`${api}/api/jobs/${job.id}`, {headers: {"Authorization": `Bearer ${token}`}});
            return [made.status, read.status, (await read.json()).status];
        }""", [api.url, api.token(user)])
        await context.close()
    assert result == [200, 200, "queued"]


async def test_a_refused_submit_says_when_to_retry_and_the_button_waits_until_then(
        api_settings: Any, user: uuid.UUID, browser: Any) -> None:
    from harness import serve_api

    async for limited in serve_api(api_settings.model_copy(update={"user_active_jobs": {"sdxl_queue": 1}})):
        await limited.set_balance(user, 5)
        watched = await open_page(browser, f"{limited.url}/#token={limited.token(user)}")
        page = watched.page
        await page.wait_for_selector("#app:not([hidden])")
        await submit(page, "sdxl_image_fast", "a fox")
        await page.fill("#prompt", "a second fox")
        await page.click("#submit")  # over the cap of one job at a time: 429 with Retry-After
        await page.wait_for_selector("#form-error:not([hidden])")
        shown = await page.inner_text("#form-error")
        assert "Too many active jobs" in shown and "retry in" in shown.lower()
        assert await page.is_disabled("#submit")
        assert (await page.inner_text("#submit")).startswith("Retry in ")
        assert watched.problems() == []
        await page.context.close()  # its event stream would hold the server's shutdown
