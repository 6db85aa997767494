"""The promises every fault test checks at its end, and the figures it reports.

`audit` reads the store (the source of truth) and counts each way a promise can be broken: a job
lost or stuck, a job recorded as completed twice, a charge twice, a refund missing, an asset without
its job or a job without its assets, a balance that the ledger does not explain. `record` prints the
figures and appends them as one JSON line to `test-output/reliability.jsonl`, from which
`tests/faults/report.py` writes `docs/reliability.md`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.catalog import Catalog
from jobs.tables import assets, callback_receipts, credit_ledger, jobs, profiles

ROOT = Path(__file__).resolve().parents[2]
FIGURES_FILE = Path(os.environ.get("OURVIDZ_RELIABILITY_FILE", ROOT / "test-output" / "reliability.jsonl"))

#: The figures that count a broken promise: each must be 0.
MUST_BE_ZERO = ("lost", "not_terminal", "duplicates", "double_charges", "missing_refunds", "wrong_refunds",
                "uncharged", "orphan_assets", "missing_assets", "balance_mismatches", "negative_balances",
                "wrongly_accepted", "server_errors")


def repeats(default: int) -> float:
    """How many times bigger than its default a fault test runs: `OURVIDZ_FAULT_REPEATS` (1 by default)."""
    return max(float(os.environ.get("OURVIDZ_FAULT_REPEATS", "1")), 0.05) * default


def scaled(default: int, minimum: int = 1) -> int:
    return max(round(repeats(default)), minimum)


@dataclass
class Figures:
    """What one fault test did and what went wrong; every name in MUST_BE_ZERO must stay 0."""

    jobs: int = 0
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    lost: int = 0
    not_terminal: int = 0
    duplicates: int = 0
    double_charges: int = 0
    missing_refunds: int = 0
    wrong_refunds: int = 0
    uncharged: int = 0
    orphan_assets: int = 0
    missing_assets: int = 0
    balance_mismatches: int = 0
    negative_balances: int = 0
    wrongly_accepted: int = 0
    server_errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def broken(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in MUST_BE_ZERO if getattr(self, name)}


async def audit(engine: AsyncEngine, catalog: Catalog, *, starting_balances: Mapping[uuid.UUID, int],
                accepted: Iterable[str] = (), require_terminal: bool = True) -> Figures:
    """Count every broken promise in the store.

    `starting_balances`: each user's balance before the test (a user missing here is not checked);
    `accepted`: the ids of the jobs the API answered 200 for (each must exist and end terminal).
    """
    figures = Figures()
    async with engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(sa.select(
            jobs.c.id, jobs.c.user_id, jobs.c.job_type, jobs.c.status, jobs.c.price, jobs.c.attempts))).mappings()]
        ledger = [dict(r) for r in (await conn.execute(sa.select(
            credit_ledger.c.job_id, credit_ledger.c.user_id, credit_ledger.c.kind,
            credit_ledger.c.amount))).mappings()]
        asset_counts = dict((await conn.execute(sa.select(assets.c.job_id, sa.func.count())
                                                .group_by(assets.c.job_id))).all())
        balances = dict((await conn.execute(sa.select(profiles.c.id, profiles.c.token_balance))).all())
        # The completions the API accepted as news (not as a replay): more than one per job is a duplicate.
        accepted_completions = Counter(
            job_id for job_id, response in (await conn.execute(sa.select(
                callback_receipts.c.job_id, callback_receipts.c.response)
                .where(callback_receipts.c.status_code == 200))).all()
            if response.get("status") == "completed" and not response.get("duplicate"))

    by_id = {str(r["id"]): r for r in rows}
    figures.jobs = len(rows)
    # Not a broken promise, but what the faults cost: tries beyond the first.
    figures.extra["reruns"] = sum(max(r["attempts"] - 1, 0) for r in rows)
    statuses = Counter(r["status"] for r in rows)
    figures.completed, figures.failed, figures.canceled = (statuses["completed"], statuses["failed"],
                                                           statuses["canceled"])
    accepted = set(accepted)
    figures.accepted = len(accepted)
    for job_id in sorted(accepted - set(by_id)):
        figures.lost += 1
        figures.problems.append(f"accepted job {job_id} has no row")
    for row in rows:
        if require_terminal and row["status"] not in ("completed", "failed", "canceled"):
            figures.not_terminal += 1
            figures.problems.append(f"job {row['id']} is still {row['status']}")

    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in ledger:
        entries.setdefault(str(entry["job_id"]), []).append(entry)
    for job_id, row in by_id.items():
        kinds = Counter(e["kind"] for e in entries.get(job_id, []))
        total = sum(e["amount"] for e in entries.get(job_id, []))
        price = row["price"]
        if kinds["charge"] > 1 or kinds["refund"] > 1 or total < -price:
            figures.double_charges += 1
            figures.problems.append(f"job {job_id}: ledger {dict(kinds)} sums to {total}, price {price}")
        elif kinds["charge"] == 0:
            figures.uncharged += 1
            figures.problems.append(f"job {job_id} was never charged")
        elif row["status"] in ("failed", "canceled") and total != 0:
            figures.missing_refunds += 1
            figures.problems.append(f"{row['status']} job {job_id}: ledger sums to {total}, not 0")
        elif row["status"] in ("queued", "processing", "completed") and total != -price:
            figures.wrong_refunds += 1
            figures.problems.append(f"{row['status']} job {job_id}: ledger sums to {total}, not {-price}")
    for job_id in set(entries) - set(by_id):
        figures.double_charges += 1
        figures.problems.append(f"ledger rows for job {job_id}, which does not exist")

    for job_key, count in asset_counts.items():
        row = by_id.get(str(job_key))
        if row is None or row["status"] != "completed":
            figures.orphan_assets += count
            figures.problems.append(f"{count} assets of job {job_key}, which is "
                                    f"{'missing' if row is None else row['status']}")
    for job_id, row in by_id.items():
        if row["status"] != "completed":
            continue
        wanted = catalog[row["job_type"]].num_outputs
        have = asset_counts.get(row["id"], 0)
        if have < wanted:
            figures.missing_assets += 1
            figures.problems.append(f"completed job {job_id} has {have} assets, not {wanted}")
        elif have > wanted:
            figures.duplicates += 1
            figures.problems.append(f"completed job {job_id} has {have} assets, not {wanted}")
    for job_key, count in accepted_completions.items():
        if count > 1:
            figures.duplicates += 1
            figures.problems.append(f"job {job_key}: {count} completions accepted as news")

    sums: Counter[uuid.UUID] = Counter()
    for entry in ledger:
        sums[entry["user_id"]] += entry["amount"]
    for user_id, start in starting_balances.items():
        balance = balances.get(user_id)
        if balance is None and start == 0 and sums[user_id] == 0:
            continue
        if balance != start + sums[user_id]:
            figures.balance_mismatches += 1
            figures.problems.append(f"user {user_id}: balance {balance}, start {start} + ledger {sums[user_id]}")
    figures.negative_balances = sum(1 for b in balances.values() if b < 0)
    return figures


def record(scenario: str, figures: Figures, started: float, **extra: Any) -> None:
    """Print the figures and append them to the figures file, then fail on any broken promise."""
    figures.extra.update(extra)
    line = {"scenario": scenario, "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1),
            "repeats": float(os.environ.get("OURVIDZ_FAULT_REPEATS", "1")),
            **{k: v for k, v in asdict(figures).items() if k not in ("extra", "problems")}, **figures.extra}
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES_FILE.open("a") as out:
        out.write(json.dumps(line, default=str) + "\n")
    print(f"\n[reliability] {json.dumps(line, default=str)}")  # noqa: T201 - the figures are the test's report
    for problem in figures.problems[:20]:
        print(f"[reliability]   {problem}")  # noqa: T201
    assert not figures.broken(), f"{scenario}: {figures.broken()}; {figures.problems[:10]}"
