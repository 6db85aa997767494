"""One embedded instance per data folder: a lock held for the instance's life, and how others find it.

`ourvidz up` takes an exclusive `flock` on `<data>/instance.lock` before it changes anything, and
writes there where it answers. A second `up` on the same folder finds the lock taken, reads who holds
it, and stops without touching anything. The CLI's other commands read the same file to find the
instance's URL. The lock is the kernel's: it ends with the process, however the process ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

LOCK_FILE = "instance.lock"
SECRETS_FILE = "secrets.json"
DEFAULT_DIR = Path(".ourvidz")


@dataclass(frozen=True, slots=True)
class Running:
    pid: int
    url: str


class AlreadyRunning(Exception):
    def __init__(self, data_dir: Path, holder: Running | None) -> None:
        where = f" (pid {holder.pid}, at {holder.url})" if holder else ""
        super().__init__(f"ourvidz is already running from {data_dir.resolve()}{where}")
        self.holder = holder


class PortBusy(Exception):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}; choose another with --port")


class NoInstance(Exception):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(f"no ourvidz instance in {data_dir.resolve()}: start one with `ourvidz up` "
                         f"(or give --data-dir, or --token and --api-url)")


def read_running(data_dir: Path) -> Running | None:
    """Who holds the folder's lock, as they wrote it; None if nobody wrote it (or it is unreadable)."""
    try:
        info = json.loads((data_dir / LOCK_FILE).read_text())
        return Running(pid=int(info["pid"]), url=str(info["url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_running(data_dir: Path) -> bool:
    """Whether a live `up` holds this folder's lock (asked without taking it for long)."""
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class InstanceLock:
    """Held from `acquire` to `release` (or the process's end)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """AlreadyRunning if another process holds the folder; nothing is written in that case."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Opened without truncating: the holder's record must survive a failed attempt.
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunning(self.data_dir, read_running(self.data_dir)) from None
        self._handle = handle

    def publish(self, url: str) -> None:
        """Say where this instance answers (for a second `up`'s message and for the CLI)."""
        assert self._handle is not None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps(asdict(Running(pid=os.getpid(), url=url))))
        self._handle.flush()

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
        self._handle.close()  # closing drops the lock
        self._handle = None


def check_port(host: str, port: int) -> None:
    """PortBusy if nothing could listen there now: checked before the instance changes any state."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise PortBusy(host, port, reason) from exc


def find_data_dir(start: Path | None = None) -> Path:
    """The nearest `.ourvidz` folder with an instance in it, from `start` (the current folder) upwards."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_DIR
        if (candidate / SECRETS_FILE).exists():
            return candidate
    raise NoInstance(here / DEFAULT_DIR)
