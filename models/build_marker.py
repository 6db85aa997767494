"""Whether a checkpoint folder is a finished build: a marker file, read without importing torch.

`models/checkpoints.py` writes the marker last, after every file of the build is in place, so a folder
with it is complete; the embedded mode asks this on every start before deciding to import the builders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Size = Literal["tiny", "full"]

MARKER = ".ourvidz-complete"


def is_complete(out: Path, size: Size) -> bool:
    """Whether `out` is a finished build of this size."""
    marker = out / MARKER
    return marker.is_file() and marker.read_text().strip() == size
