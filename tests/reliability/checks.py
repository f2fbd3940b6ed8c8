"""Ledger checks beyond tests/invariants.py, used after model and fuzz steps.

`balances_from_rows` recomputes every wallet's balance from the raw lots and holds (rule 2):
available = remaining value of open lots that are available and not expired, plus value of
holds past their TTL; pending = the same for lots not yet available; held = value of active
holds within their TTL. `check_balances` compares that with what GetBalance answers and checks
that nothing is negative.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from loyalty.v1 import wallet_pb2
from sqlalchemy import select

from loyalty_ledger.ledger import tables as t

Key = tuple[str, str]  # (wallet_id, asset)


async def balances_from_rows(conn: Any, now_us: int) -> dict[Key, tuple[int, int, int]]:
    lots = {lot.id: lot for lot in await conn.execute(select(t.lots))}
    holds = {h.id: h for h in await conn.execute(select(t.holds)) if h.status == "ACTIVE"}
    lapsed: dict[str, int] = defaultdict(int)
    held: dict[Key, int] = defaultdict(int)
    for a in await conn.execute(select(t.hold_allocations)):
        hold = holds.get(a.hold_id)
        if hold is None:
            continue
        if hold.expires_at_us <= now_us:
            lapsed[a.lot_id] += a.amount
        else:
            held[(hold.wallet_id, hold.asset)] += a.amount
    available: dict[Key, int] = defaultdict(int)
    pending: dict[Key, int] = defaultdict(int)
    for lot in lots.values():
        if lot.state != "OPEN":
            continue
        value = lot.remaining + lapsed.get(lot.id, 0)
        if lot.expires_at_us is not None and lot.expires_at_us <= now_us:
            continue
        key = (lot.wallet_id, lot.asset)
        if lot.available_at_us <= now_us:
            available[key] += value
        else:
            pending[key] += value
    keys = set(available) | set(pending) | set(held)
    return {k: (available.get(k, 0), pending.get(k, 0), held.get(k, 0)) for k in keys}


def check_balances(stub: Any, expected: dict[Key, tuple[int, int, int]], wallets: Any) -> None:
    """GetBalance of each wallet agrees with the rows; nothing is negative (blocking stub)."""
    for wallet in wallets:
        response = stub.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=wallet))
        for b in response.balances:
            got = (b.available, b.pending, b.held)
            assert min(got) >= 0, (wallet, b)
            assert got == expected.get((wallet, b.asset), (0, 0, 0)), (wallet, b.asset, got)
