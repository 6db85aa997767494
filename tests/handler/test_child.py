"""The model process's handle: it never outlives the process that started it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from processes import ROOT

pytestmark = pytest.mark.slow

# Starts a model process and ends without `stop`, as a worker does when an exception escapes it.
_FORGETFUL_PARENT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from handler.child import ChildProcess
    from handler.main import model_paths
    from handler.settings import WorkerSettings

    async def main() -> None:
        settings = WorkerSettings(checkpoints_dir=Path(sys.argv[1]), queues=["sdxl"], device="cpu")
        child = ChildProcess(model_paths(settings), settings.queues, settings.device)
        await child.start()
        print(child.pid, flush=True)

    asyncio.run(main())
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_parent_that_exits_without_stopping_its_model_process_exits_and_takes_it_along(
        tiny_checkpoints: Path) -> None:
    """The model process ignores SIGTERM, which is what multiprocessing sends its daemonic children at exit
    before it joins them: without a kill of our own the parent would wait for it forever."""
    parent = subprocess.Popen([sys.executable, "-c", _FORGETFUL_PARENT, str(tiny_checkpoints)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        code = parent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.stdout.close()
    assert code == 0, "the parent never exited"
    assert not _alive(child_pid)
