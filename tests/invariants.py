"""Ledger invariants (DESIGN.md rules 1-3), checked straight against the tables."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.ledger import tables as t


async def check_invariants(conn: AsyncConnection) -> None:
    """Raise AssertionError naming the first broken rule."""
    # Rule 1: every transaction's postings sum to zero per asset.
    sums: dict[tuple[str, str], int] = defaultdict(int)
    account_balances: dict[tuple[str, str], int] = defaultdict(int)
    for p in await conn.execute(select(t.postings)):
        sums[(p.transaction_id, p.asset)] += p.amount
        account_balances[(p.account, p.asset)] += p.amount
    unbalanced = {k: v for k, v in sums.items() if v != 0}
    assert not unbalanced, f"unbalanced transactions: {unbalanced}"

    # Rule 3: each lot's parts add up and none is negative.
    lot_remaining: dict[tuple[str, str], int] = defaultdict(int)
    lot_held: dict[str, int] = {}
    for lot in await conn.execute(select(t.lots)):
        parts = lot.remaining + lot.spent + lot.held + lot.expired + lot.reversed
        assert lot.amount == parts, f"lot {lot.id}: {lot.amount} != {parts}"
        assert min(lot.remaining, lot.spent, lot.held, lot.expired, lot.reversed) >= 0
        lot_remaining[(f"wallet:{lot.wallet_id}", lot.asset)] += lot.remaining
        lot_held[lot.id] = lot.held

    # The wallet account is the sum of its lots' remaining value (rule 2's basis).
    for (account, asset), value in account_balances.items():
        if account.startswith("wallet:"):
            assert value == lot_remaining.get((account, asset), 0), (
                f"{account} {asset}: postings {value} != lots {lot_remaining.get((account, asset))}"
            )
    for key, value in lot_remaining.items():
        assert account_balances.get(key, 0) == value, f"{key}: lots {value} without postings"

    # Held value on lots is exactly what active holds reserve; hold accounts match.
    active = {h.id: h for h in await conn.execute(select(t.holds)) if h.status == "ACTIVE"}
    reserved: dict[str, int] = defaultdict(int)
    per_hold: dict[str, int] = defaultdict(int)
    for a in await conn.execute(select(t.hold_allocations)):
        if a.hold_id in active:
            reserved[a.lot_id] += a.amount
            per_hold[a.hold_id] += a.amount
    for lot_id, held in lot_held.items():
        assert held == reserved.get(lot_id, 0), f"lot {lot_id} held {held} != {reserved[lot_id]}"
    for (account, _asset), value in account_balances.items():
        if account.startswith("hold:"):
            hold_id = account.removeprefix("hold:")
            assert value == per_hold.get(hold_id, 0), f"{account} = {value}"
            if hold_id in active:
                assert value == active[hold_id].amount - active[hold_id].captured_amount

    # Every transaction appended its outbox event in the same database transaction.
    txn_ids = {r.id for r in await conn.execute(select(t.transactions.c.id))}
    evented = {
        r.transaction_id
        for r in await conn.execute(select(t.outbox_events.c.transaction_id))
        if r.transaction_id is not None
    }
    assert txn_ids <= evented, f"transactions without events: {sorted(txn_ids - evented)[:5]}"
