"""scripts/bench_hot_path.py: it runs every layer of a submit against real servers and prints them with floors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_it_prints_each_layers_cpu_and_the_database_steps_against_their_floor() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_hot_path.py"), "--requests", "30"],
                            capture_output=True, text=True, timeout=240, cwd=REPO, check=False)

    assert result.returncode == 0, result.stderr[-3000:]
    rows = {(cells[0], cells[1]): cells[2:] for line in result.stdout.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")]) and len(cells) == 4 and cells[0] != "layer"
            and not cells[0].startswith("-")}
    assert len(rows) == 12, result.stdout
    for what, (microseconds, ratio) in rows.items():
        assert float(microseconds.replace(",", "")) > 0, what
        assert ratio == "–" or re.fullmatch(r"\d+\.\d\d", ratio), (what, ratio)
    floors = [ratio for (_, what), (_, ratio) in rows.items() if "floor" in what]
    assert floors == ["1.00", "1.00"]
