"""The console the CLI prints to: the terminal's width, or no wrapping at 80 columns when piped."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (a file, another program) keeps whole tokens, ids and links on one line.
PIPED_WIDTH = 1000


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
