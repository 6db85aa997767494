"""A small client of the ourvidz API for the command line: submit a job and follow it, list jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs.status import JobStatus
from ourvidz import terminal


def _away(console: Console, api_url: str, exc: httpx.TransportError) -> int:
    reason = str(exc) or type(exc).__name__
    console.print(f"[red]No ourvidz API answers at {api_url}[/] ({reason}). Is `ourvidz up` running?")
    return 1


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _explain(console: Console, response: httpx.Response) -> int:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    console.print(f"[red]{response.status_code} {body.get('error')}[/]: {body.get('details') or ''}")
    if body.get("suggestedAction"):
        console.print(body["suggestedAction"])
    retry_after = response.headers.get("Retry-After")
    if retry_after is not None and response.status_code in (429, 503):
        console.print(f"You can retry in {retry_after} s.")
    return 1


def retry_after(response: httpx.Response, default: float = 1.0) -> float:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else default


async def run_submit(api_url: str, token: str, job_type: str, prompt: str, wait: bool,
                     negative_prompt: str | None, seed: int | None) -> int:
    console = terminal.console()
    try:
        return await _submit(console, api_url, token, job_type, prompt, wait, negative_prompt, seed)
    except httpx.TransportError as exc:
        return _away(console, api_url, exc)


async def _submit(console: Console, api_url: str, token: str, job_type: str, prompt: str, wait: bool,
                  negative_prompt: str | None, seed: int | None) -> int:
    metadata: dict[str, Any] = {"prompt": prompt}
    if negative_prompt:
        metadata["negative_prompt"] = negative_prompt
    if seed is not None:
        metadata["seed"] = seed
    async with httpx.AsyncClient(base_url=api_url, headers=_headers(token), timeout=30) as client:
        response = await client.post("/api/queue-job", json={"jobType": job_type, "metadata": metadata})
        if response.status_code != 200:
            return _explain(console, response)
        job = response.json()["job"]
        console.print(f"Queued {job_type} job [bold]{job['id']}[/] (queue length {response.json()['queueLength']})")
        if not wait:
            return 0
        final = await _follow(client, job["id"], console)
    if final["status"] != "completed":
        console.print(f"[red]{final['status']}[/]: {final.get('error_message')}")
        return 1
    for asset in final["assets"]:
        url = asset["url"] if asset["url"].startswith("http") else api_url.rstrip("/") + asset["url"]
        console.print(f"{asset['kind']} {asset['index'] + 1}: {url}", soft_wrap=True)
    if final["metadata"].get("enhanced_prompt"):
        console.print(f"Enhanced prompt: {final['metadata']['enhanced_prompt']}")
    return 0


async def _follow(client: httpx.AsyncClient, job_id: str, console: Console) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("queued", total=100)
        while True:
            response = await client.get(f"/api/jobs/{job_id}")
            if response.status_code in (429, 503):  # polled too often, or the API is busy: as told, then again
                progress.update(task, description=f"waiting {retry_after(response):g} s (HTTP {response.status_code})")
                await asyncio.sleep(retry_after(response))
                continue
            job: dict[str, Any] = response.json()
            waiting = f"queued (position {job.get('queue_position')})" if job["status"] == "queued" else job["status"]
            progress.update(task, completed=job.get("progress", 0), description=waiting)
            if JobStatus(job["status"]).is_terminal:
                return job
            await asyncio.sleep(0.5)


async def run_jobs(api_url: str, token: str, limit: int) -> int:
    console = terminal.console()
    try:
        async with httpx.AsyncClient(base_url=api_url, headers=_headers(token), timeout=30) as client:
            response = await client.get("/api/jobs", params={"limit": limit})
    except httpx.TransportError as exc:
        return _away(console, api_url, exc)
    if response.status_code != 200:
        return _explain(console, response)
    table = Table("id", "type", "status", "progress", "created", "assets")
    for job in response.json():
        table.add_row(job["id"], job["job_type"], job["status"], f"{job['progress']}%", job["created_at"][:19],
                      str(len(job["assets"])))
    console.print(table)
    return 0
