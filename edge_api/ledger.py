"""Credits: the balance in `profiles.token_balance` and the append-only `credit_ledger` beside it.

Each job has at most one `charge` and one `refund` row (`unique (job_id, kind)`), so no retry,
duplicate callback or concurrent sweeper can charge or refund twice. Both are written in the same
transaction as the status change that causes them.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.db import insert_ignoring_conflicts, utcnow
from jobs.tables import credit_ledger, profiles


class InsufficientCredits(Exception):
    def __init__(self, balance: int, price: int) -> None:
        super().__init__(f"balance {balance} is below the price {price}")
        self.balance = balance
        self.price = price


async def charge(conn: AsyncConnection, user_id: uuid.UUID, job_id: uuid.UUID, price: int,
                 starting_credits: int) -> int:
    """Debit the price without going below zero and record it; returns the new balance."""
    balance = await _debit(conn, user_id, price)
    if balance is None:
        balance = await _first_seen(conn, user_id, price, starting_credits)
    await conn.execute(sa.insert(credit_ledger).values(user_id=user_id, job_id=job_id, kind="charge",
                                                       amount=-price, created_at=utcnow()))
    return int(balance)


async def _debit(conn: AsyncConnection, user_id: uuid.UUID, price: int) -> int | None:
    debit = (sa.update(profiles).where(profiles.c.id == user_id, profiles.c.token_balance >= price)
             .values(token_balance=profiles.c.token_balance - price).returning(profiles.c.token_balance))
    balance = (await conn.execute(debit)).scalar()
    return None if balance is None else int(balance)


async def _first_seen(conn: AsyncConnection, user_id: uuid.UUID, price: int, starting_credits: int) -> int:
    current = (await conn.execute(sa.select(profiles.c.token_balance).where(profiles.c.id == user_id))).scalar()
    if current is not None or starting_credits < price:
        raise InsufficientCredits(int(current or starting_credits), price)
    # A user seen for the first time gets the starting balance, once: of concurrent first requests
    # one creates the profile and the others find it (the insert waits for that one to commit).
    await conn.execute(insert_ignoring_conflicts(conn.engine, profiles).values(
        id=user_id, token_balance=starting_credits, created_at=utcnow()))
    balance = await _debit(conn, user_id, price)
    if balance is None:
        current = (await conn.execute(sa.select(profiles.c.token_balance).where(profiles.c.id == user_id))).scalar()
        raise InsufficientCredits(int(current or 0), price)
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
