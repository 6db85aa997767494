"""What a stuck test leaves to go on: every asyncio task's await chain, printed before pytest-timeout fires."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

# How long before the test's timeout the chains are printed: time enough to print, none to recover.
MARGIN_SECONDS = 10.0


def await_chains() -> str:
    """Every task of this loop, with the chain of coroutines it is suspended in (innermost last)."""
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}:")
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "\n".join(lines)


def print_await_chains(test: str) -> None:
    """To stderr, which pytest shows with the test's failure."""
    sys.stderr.write(f"\n--- {test} is about to time out; the event loop's tasks:\n{await_chains()}\n")
    sys.stderr.flush()
