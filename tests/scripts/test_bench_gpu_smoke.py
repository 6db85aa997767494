"""scripts/bench_gpu.py: its CPU smoke mode prints its table, and asked for CUDA where there is none it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_gpu.py"


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, check=False)


@pytest.mark.slow
def test_cpu_smoke_mode_times_every_model_and_says_its_figures_are_not_gpu_figures(tmp_path: Path) -> None:
    result = _run("--device", "cpu", "--size", "tiny", "--checkpoints", str(tmp_path / "checkpoints"),
                  "--width", "32", "--height", "32", "--frames", "5", "--steps", "1", "--max-new-tokens", "4")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("These are NOT GPU figures") == 2  # first and last line, whatever scrolls between
    assert "| case " in out and "| seconds " in out
    for row in ("| SDXL 6 x 32x32, 1 steps", "| Wan 1 x 32x32, 1 steps", "| Wan 5 x 32x32, 1 steps",
                "| Qwen enhance:", "| video7b_fast_enhanced = Qwen + video_fast"):
        assert row in out, f"no {row!r} row in:\n{out}"
    for model in ("| sdxl ", "| wan ", "| qwen "):
        assert model in out  # the load-time table
    # Tiny models at small sizes: no TFLOPS, MFU or speed-up is claimed.
    sdxl_row = next(line for line in out.splitlines() if line.startswith("| SDXL 6 x 32x32"))
    assert sdxl_row.count("n/a") >= 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_exits_non_zero_and_builds_nothing(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"

    result = _run("--device", "cuda", "--checkpoints", str(checkpoints), timeout=120)

    assert result.returncode == 2
    assert "CUDA is not available on this machine" in result.stderr
    assert "No GPU figures were produced" in result.stderr
    assert "| case " not in result.stdout
    assert not checkpoints.exists()
