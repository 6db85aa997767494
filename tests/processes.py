"""Worker and API processes of their own, for tests that must signal them: SIGKILL, SIGTERM, SIGSTOP.

Each starts in a session of its own, so a signal to its group reaches its model process too, and reads its
settings from the `OURVIDZ_*` environment, as a deployed process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from edge_api.settings import ApiSettings
from handler.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]


def settings_env(settings: WorkerSettings | ApiSettings) -> dict[str, str]:
    """The OURVIDZ_* environment that makes a process read these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OURVIDZ_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, list):
            env[f"OURVIDZ_{name.upper()}"] = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            env[f"OURVIDZ_{name.upper()}"] = json.dumps(value)
        else:
            env[f"OURVIDZ_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class Proc:
    """A process started in a session of its own, so a signal reaches it and its children at once."""

    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    async def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended in `timeout` seconds."""
        if self.process.returncode is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.kill()


async def start_process(args: list[str], env: dict[str, str], log: Path) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=out)
    return Proc(process, log)


async def start_worker(settings: WorkerSettings, log: Path) -> Proc:
    """`python -m ourvidz worker` with these settings."""
    return await start_process(["-m", "ourvidz", "worker", "--queues", ",".join(settings.queues)],
                               settings_env(settings), log)


@contextlib.asynccontextmanager
async def worker_process(settings: WorkerSettings, log: Path) -> AsyncIterator[Proc]:
    """`start_worker` for the block; whatever is left of its group is SIGKILLed when the block ends."""
    proc = await start_worker(settings, log)
    try:
        yield proc
    finally:
        await proc.kill()
