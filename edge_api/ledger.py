"""Credits: the balance in `profiles.token_balance` and the append-only `credit_ledger` beside it.

Each job has at most one `charge` and one `refund` row (`unique (job_id, kind)`), so no retry,
duplicate callback or concurrent sweeper can charge or refund twice. Both are written in the same
transaction as the status change that causes them.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from edge_api import active_jobs
from edge_api.active_jobs import TooManyActiveJobs
from jobs.db import insert_ignoring_conflicts, utcnow
from jobs.tables import credit_ledger, profiles


class InsufficientCredits(Exception):
    def __init__(self, balance: int, price: int) -> None:
        super().__init__(f"balance {balance} is below the price {price}")
        self.balance = balance
        self.price = price


async def charge(conn: AsyncConnection, user_id: uuid.UUID, job_id: uuid.UUID, price: int,
                 starting_credits: int, queue: str, cap: int) -> int:
    """Debit the price without going below zero, and count the job against the user's cap on its queue, in
    one update of the profile row; record the charge; returns the new balance."""
    balance = await _debit(conn, user_id, price, queue, cap)
    if balance is None:
        balance = await _first_seen(conn, user_id, price, starting_credits, queue, cap)
    await conn.execute(sa.insert(credit_ledger).values(user_id=user_id, job_id=job_id, kind="charge",
                                                       amount=-price, created_at=utcnow()))
    return int(balance)


def debit_statement(user_id: object, price: object, queue: str, cap: object) -> sa.Update:
    """The profile's conditional update: enough credits and room under the cap, or no row."""
    active = active_jobs.counter(queue)
    return (sa.update(profiles)
            .where(profiles.c.id == user_id, profiles.c.token_balance >= price, active < cap)
            .values({profiles.c.token_balance: profiles.c.token_balance - price, active: active + 1}))


async def _debit(conn: AsyncConnection, user_id: uuid.UUID, price: int, queue: str, cap: int) -> int | None:
    debit = debit_statement(user_id, price, queue, active_jobs.effective(cap)).returning(profiles.c.token_balance)
    balance = (await conn.execute(debit)).scalar()
    return None if balance is None else int(balance)


async def _profile(conn: AsyncConnection, user_id: uuid.UUID, queue: str) -> sa.Row[Any] | None:
    """The user's balance and count of active jobs on `queue`, or None for a user not seen yet."""
    query = sa.select(profiles.c.token_balance, active_jobs.counter(queue)).where(profiles.c.id == user_id)
    return (await conn.execute(query)).first()


def _refusal(found: sa.Row[Any] | None, price: int, queue: str, cap: int,
             starting_credits: int = 0) -> Exception:
    """Why the debit matched no row: too few credits, or too many active jobs."""
    if found is None:
        return InsufficientCredits(starting_credits, price)
    if found[0] < price:
        return InsufficientCredits(int(found[0]), price)
    return TooManyActiveJobs(queue, cap)


async def _first_seen(conn: AsyncConnection, user_id: uuid.UUID, price: int, starting_credits: int,
                      queue: str, cap: int) -> int:
    found = await _profile(conn, user_id, queue)
    if found is not None or starting_credits < price:
        raise _refusal(found, price, queue, cap, starting_credits)
    # A user seen for the first time gets the starting balance, once: of concurrent first requests
    # one creates the profile and the others find it (the insert waits for that one to commit).
    await conn.execute(insert_ignoring_conflicts(conn.engine, profiles).values(
        id=user_id, token_balance=starting_credits, created_at=utcnow()))
    balance = await _debit(conn, user_id, price, queue, cap)
    if balance is None:
        raise _refusal(await _profile(conn, user_id, queue), price, queue, cap)
    return balance


async def refund(conn: AsyncConnection, user_id: uuid.UUID, job_id: uuid.UUID, price: int) -> None:
    """Give a job's price back, once: the caller has just moved the job to failed or canceled."""
    inserted = await conn.execute(sa.insert(credit_ledger).values(
        user_id=user_id, job_id=job_id, kind="refund", amount=price, created_at=utcnow()))
    if inserted.rowcount == 1 and price:
        await conn.execute(sa.update(profiles).where(profiles.c.id == user_id)
                           .values(token_balance=profiles.c.token_balance + price))


async def balance_of(conn: AsyncConnection, user_id: uuid.UUID, starting_credits: int = 0) -> int:
    """The balance; a user not seen yet has the starting credits their first job will find."""
    value = (await conn.execute(sa.select(profiles.c.token_balance).where(profiles.c.id == user_id))).scalar()
    return starting_credits if value is None else int(value)
