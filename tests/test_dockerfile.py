"""The worker image cannot be built here (no Docker engine, no base images), so its recipe is checked instead."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = DOCKERFILE.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_every_file_the_dockerfile_copies_exists() -> None:
    copies = [args for op, args in _instructions() if op == "COPY"]
    assert copies
    for args in copies:
        *sources, _target = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which the project lacks"


def test_the_image_runs_the_pull_worker_as_a_non_root_user_in_exec_form() -> None:
    cmd = [args for op, args in _instructions() if op == "CMD"][-1]
    assert json.loads(cmd)[:2] == ["ourvidz", "worker"]  # exec form: SIGTERM reaches the worker itself
    users = [args for op, args in _instructions() if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_the_image_installs_a_cuda_torch_and_the_worker_extra() -> None:
    runs = " ".join(args for op, args in _instructions() if op == "RUN")
    assert "download.pytorch.org/whl/cu" in runs
    assert ".[worker]" in runs
    assert "scripts/download_weights.py" in runs


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "ourvidz", "worker", "--help"],
    [sys.executable, "-m", "ourvidz", "--help"],
    [sys.executable, "-m", "handler.runpod_serverless", "--help"],
    [sys.executable, "scripts/download_weights.py", "--help"],
])
def test_the_image_entry_points_import_and_answer_help(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()
