#!/usr/bin/env bash
# The test command: sets up (scripts/setup.sh), lints, type-checks, then runs the whole suite against
# real PostgreSQL and Redis servers that the tests start on free ports. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest -p no:cacheprovider "$@"
