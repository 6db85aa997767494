#!/usr/bin/env bash
# Sets up a fresh machine for ourvidz: a virtual environment with the project and its dev tools
# (torch pinned to the CPU build 2.13.0), and the PostgreSQL and Redis binaries the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
if [ ! -f .venv/.ourvidz-installed ] || [ pyproject.toml -nt .venv/.ourvidz-installed ]; then
    .venv/bin/pip install --quiet -e '.[dev]'
    touch .venv/.ourvidz-installed
fi

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Debian's Chromium for tests/e2e/test_browser.py (Playwright's own browser downloads are not used).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
