"""scripts/setup.sh: `up` gets the project alone; only `--tests` adds the dev tools and installs system programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from processes import ROOT


def _fake(path: Path, log: Path) -> None:
    path.write_text(f'#!/bin/sh\necho "{path.name} $*" >> {log}\n')
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A copy of the script with a fake venv, and a PATH whose apt-get only records and that lacks the servers."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "pyproject.toml").write_text("")
    log = tmp_path / "calls.log"
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name in ("python", "pip"):
        _fake(venv_bin / name, log)
    tools = tmp_path / "tools"
    tools.mkdir()
    _fake(tools / "apt-get", log)
    for name in ("bash", "ls", "touch", "dirname", "cat", "echo"):
        found = shutil.which(name)
        assert found is not None
        (tools / name).symlink_to(found)
    return tmp_path, log, {**os.environ, "PATH": str(tools)}


def test_setup_for_up_installs_the_embedded_extra_and_no_system_package(
        sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    root, log, env = sandbox
    subprocess.run(["bash", str(root / "scripts" / "setup.sh")], env=env, check=True, timeout=60)
    calls = log.read_text()
    assert "pip install --quiet -e .[embedded]" in calls and "apt-get" not in calls


def test_setup_for_tests_installs_the_dev_extra_and_the_servers_the_tests_start(
        sandbox: tuple[Path, Path, dict[str, str]]) -> None:
    root, log, env = sandbox
    subprocess.run(["bash", str(root / "scripts" / "setup.sh"), "--tests"], env=env, check=True, timeout=60)
    calls = log.read_text()
    assert "pip install --quiet -e .[dev]" in calls
    # redis-server is off this PATH; Postgres and Chromium are found where Debian puts them, when present.
    assert "apt-get install -y -qq redis-server" in calls
