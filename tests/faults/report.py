"""Write the figures table of docs/reliability.md from the last run of each fault test.

    .venv/bin/pytest tests/faults -p no:cacheprovider      # appends to test-output/reliability.jsonl
    .venv/bin/python tests/faults/report.py               # rewrites the table between the markers

Each scenario's last line in the figures file is used; the table sits between the markers
`<!-- figures:start -->` and `<!-- figures:end -->` of the document, which is otherwise left as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "test-output" / "reliability.jsonl"
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"

# Promise, scenario, and the figures of that scenario worth showing beside the common ones.
ROWS: list[tuple[str, str, str, list[str]]] = [
    ("No job lost when a worker dies", "worker-sigkill", "test_worker_kills.py", ["kills", "kills_mid_job"]),
    ("The same in the embedded mode (SQLite, the jobs table as the queue)", "worker-sigkill-embedded",
     "test_worker_kills.py", ["kills", "kills_mid_job"]),
    ("Worker restarts its model process on GPU errors; the job is rerun", "model-process-deaths",
     "test_worker_kills.py", ["kills", "child_restarts", "jobs_handed_back"]),
    ("No job lost when Redis loses its data", "redis-flush-restart", "test_redis_faults.py",
     ["flushes", "restarts", "refused_503", "live_workers_jobs_requeued", "messages_given_back"]),
    ("Queue unreachable: 503 with Retry-After, nothing half-made, all accepted complete", "redis-unreachable",
     "test_redis_faults.py", ["outages", "outage_seconds", "refused_503", "messages_given_back"]),
    ("Database unreachable: 503 with Retry-After; a retry never makes a second job; all accepted complete",
     "postgres-unreachable", "test_postgres_faults.py",
     ["outages", "outage_seconds", "refused_503", "ambiguous_503", "messages_given_back"]),
    ("No job lost when the API dies between commit and push (outbox)", "api-crash-before-push",
     "test_api_crash.py", ["kills", "committed_unpushed_at_kill", "connection_errors"]),
    ("RunPod serverless: stops mid-job, duplicate deliveries, an endpoint away, worker kills; all complete once",
     "serverless-faults", "test_serverless_faults.py",
     ["runpod_stops", "duplicate_deliveries", "worker_kills", "runpod_retries", "refused_503", "dispatches"]),
    ("App webhooks: every event once (by webhook-id) and in order through API kills mid-delivery and a "
     "receiver that stalls, fails and goes away; nothing to a wrong URL", "webhook-faults", "test_webhook_faults.py",
     ["events", "kills", "kills_mid_delivery", "redeliveries", "errors_500", "stalls", "outage_refusals"]),
    ("Fair use: a 429 (per-user cap, submit rate) leaves no job and no charge; the fair order is rebuilt after "
     "each Redis flush; nothing lost or run twice", "fair-use", "test_fair_use_faults.py",
     ["refused_429", "flushes", "heavy_jobs", "light_jobs", "light_wait_p50_s", "heavy_wait_p50_s"]),
    ("Timeout at the deadline (15 min by default), refunded once; a late worker changes nothing",
     "hung-worker-deadline", "test_hung_worker.py",
     ["hung_jobs", "deadline_seconds", "late_callbacks_refused", "late_files_left"]),
    ("Idempotent callbacks, fenced retries: never both completed and refunded", "callback-replays-and-deadline-race",
     "test_callback_races.py", ["races", "late_success_won", "deadline_won", "stale_callbacks_sent"]),
    ("Two sweepers at once: no double push to completion, no double refund", "two-sweepers",
     "test_two_sweepers.py", ["flushes", "workers_died", "workers_hung", "duplicate_messages_dropped"]),
    ("No double charge, never below zero under concurrent spends", "concurrent-spends",
     "test_concurrent_spends.py", ["submits", "refused_402", "wrongly_refused", "cancels"]),
    ("The status machine under random faults (Hypothesis)", "state-machine", "test_state_machine.py",
     ["examples", "steps", "callbacks", "replays"]),
    ("Auth: no bad token gets in", "security-tokens", "test_security.py", []),
    ("Auth: another user's ids are 404, never their data", "security-cross-user", "test_security.py", []),
    ("Callbacks: forged, stale, tricky paths refused", "security-callbacks", "test_security.py", []),
    ("Bodies: oversized and malformed refused cleanly", "security-bodies", "test_security.py", []),
    ("Paths: tricks in ids and file names reach nothing", "security-paths", "test_security.py", []),
    ("The API keeps its OpenAPI schema (Schemathesis)", "schemathesis", "test_schema_fuzz.py",
     ["schema_failures"]),
]
ZERO = ["lost", "duplicates", "double_charges", "missing_refunds", "wrongly_accepted", "server_errors"]
OTHER_ZERO = ["not_terminal", "wrong_refunds", "uncharged", "orphan_assets", "missing_assets",
              "balance_mismatches", "negative_balances", "out_of_order", "wrongly_delivered"]


def last_runs(path: Path) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            runs[entry["scenario"]] = entry
    return runs


def table(runs: dict[str, dict[str, Any]]) -> str:
    header = ["promise", "test (tests/faults/)", "jobs", *ZERO, "other checks", "what the faults did", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for promise, scenario, test, extra in ROWS:
        run = runs.get(scenario)
        if run is None:
            lines.append(f"| {promise} | `{test}` | not run |" + " |" * (len(header) - 3))
            continue
        others = sum(int(run.get(k, 0)) for k in OTHER_ZERO)
        did = ", ".join(f"{k.replace('_', ' ')} {run[k]}" for k in extra if k in run)
        if run.get("reruns"):
            did += f", reruns {run['reruns']}"
        outcome = " / ".join(f"{run.get(k, 0)} {k}" for k in ("completed", "failed", "canceled"))
        size = (f"{run.get('requests', 0)} requests" if scenario.startswith(("security", "schemathesis"))
                else f"{run.get('jobs', 0)} ({outcome})")
        lines.append(
            f"| {promise} | `{test}` | {size} | "
            + " | ".join(str(run.get(k, 0)) for k in ZERO)
            + f" | {'all 0' if others == 0 else f'**{others}**'} | {did} | {run['at'][:16]}, {run['seconds']} s, "
              f"x{run.get('repeats', 1)} |")
    return "\n".join(lines)


def main() -> int:
    runs = last_runs(FIGURES)
    text = DOC.read_text()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    DOC.write_text(f"{before}{START}\n{table(runs)}\n{END}{after}")
    broken = [(s, k) for _, s, _, _ in ROWS if s in runs for k in ZERO + OTHER_ZERO if runs[s].get(k)]
    for scenario, name in broken:
        print(f"{scenario}: {name} = {runs[scenario][name]}", file=sys.stderr)  # noqa: T201
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
