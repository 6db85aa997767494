#!/usr/bin/env bash
# The run command: sets up (scripts/setup.sh), then runs the whole system on this machine with
# `ourvidz up`: the API on SQLite, local storage and a CPU worker with tiny random-weight models.
# Extra arguments go to `ourvidz up` (e.g. --port 8080 --host 0.0.0.0 --data-dir ./.ourvidz).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ourvidz up "$@"
