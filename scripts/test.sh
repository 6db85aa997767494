#!/usr/bin/env bash
# The test command: sets up (scripts/setup.sh), lints, type-checks, then runs the whole suite against
# real PostgreSQL and Redis servers that the tests start on free ports. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
# The fault suite (tests/faults: hundreds of jobs under kills, Redis outages, races; ~10 min on 2 cores)
# runs with OURVIDZ_FAULTS=1 until its run-to-run stability is established.
if [ "${OURVIDZ_FAULTS:-0}" = "1" ]; then
    .venv/bin/pytest -p no:cacheprovider "$@"
else
    .venv/bin/pytest -p no:cacheprovider --ignore=tests/faults "$@"
fi
