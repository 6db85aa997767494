"""The wheel: what it installs, and `ourvidz migrate` from a fresh virtual environment with the API extra."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import asyncpg
import pytest
from processes import ROOT
from servers import PostgresServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("ourvidz-*.whl")
    return built


def test_the_wheel_installs_only_the_products_packages_and_carries_the_migrations(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"ourvidz", "jobs", "edge_api", "handler", "models"}
    migrations = sorted(p.name for p in (ROOT / "supabase" / "migrations").glob("*.sql"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("jobs/supabase/migrations/")) == migrations
    assert "jobs/supabase/shim/plain_postgres.sql" in names
    assert "edge_api/static/index.html" in names


async def test_a_fresh_venv_with_the_api_extra_migrates_a_postgres(
        wheel: Path, tmp_path: Path, pg_server: PostgresServer) -> None:
    venv = tmp_path / "venv"
    made = await asyncio.to_thread(_run, sys.executable, "-m", "venv", str(venv))
    assert made.returncode == 0, made.stderr
    install = await asyncio.to_thread(_run, str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[api]")
    assert install.returncode == 0, install.stderr[-2000:]
    name = f"t_pkg_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(pg_server.url)
    await conn.execute(f"create database {name}")
    await conn.close()
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    # Run from elsewhere than the checkout, so nothing but the installed package can be found.
    result = await asyncio.to_thread(_run, str(venv / "bin" / "ourvidz"), "migrate", "--database-url", url,
                                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"applied {len(list((ROOT / 'supabase' / 'migrations').glob('*.sql')))} migration(s)" in result.stdout
    conn = await asyncpg.connect(url)
    try:
        tables = {r["tablename"] for r in await conn.fetch("select tablename from pg_tables where schemaname='public'")}
    finally:
        await conn.close()
    assert {"jobs", "profiles", "credit_ledger", "webhook_deliveries"} <= tables


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
