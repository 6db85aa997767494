#!/usr/bin/env bash
# Sets up this machine for ourvidz: a virtual environment with the project (torch pinned to the CPU
# build 2.13.0). `scripts/up.sh` needs only that. With `--tests` (scripts/test.sh) it adds the dev
# tools and the system programs the tests start: PostgreSQL, Redis and Chromium (with apt, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

extra=embedded
[ "${1:-}" = "--tests" ] && extra=dev

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install of this extra.
marker=.venv/.ourvidz-installed-$extra
if [ ! -f "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
    .venv/bin/pip install --quiet -e ".[$extra]"
    touch "$marker"
fi
[ "$extra" = dev ] || exit 0

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Debian's Chromium for tests/e2e/test_browser.py (Playwright's own browser downloads are not used).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
