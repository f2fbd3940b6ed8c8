"""Tier evaluation: measure wallets' qualifying amounts and move them between tiers.

Two callers, one path (`evaluate`):
- every write that changes a wallet's qualifying amount (awards, reversals, purchases and
  returns, a new wallet) marks the wallet in `Tx.tier_activity`; `Ledger.write` then calls
  `refresh_activity` inside the same database transaction;
- the daily TIER_REVIEW run (`review_chunk`) re-evaluates every ACTIVE or FROZEN wallet of
  every scheme with a programme, chunk by chunk, so activity leaving the window counts.
A change updates the wallet, appends a `tier_changes` row and a TIER_CHANGED outbox event.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, or_, select, update

from loyalty_ledger.domain.tiers import TierBasis, TierProgram
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.outbox import append_event
from loyalty_ledger.ledger.records import TxType, WalletStatus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from loyalty_ledger.ledger.engine import PostingTx

ACTIVITY = "ACTIVITY"
REVIEW = "REVIEW"
_REVIEWED = (WalletStatus.ACTIVE.value, WalletStatus.FROZEN.value)


async def qualifying(
    conn: AsyncConnection, program: TierProgram, wallet_ids: list[str], as_of_us: int
) -> dict[str, int]:
    """Each wallet's qualifying amount in the window ending at `as_of_us` (0 if none)."""
    start = program.window_start_us(as_of_us)
    query: Select[Any]
    if program.basis is TierBasis.POINTS:
        lots, txns = t.lots, t.transactions
        query = (
            select(lots.c.wallet_id, func.sum(lots.c.amount - lots.c.reversed))
            .select_from(lots.join(txns, txns.c.id == lots.c.source_transaction_id))
            .where(
                lots.c.wallet_id.in_(wallet_ids),
                lots.c.asset == program.asset,
                txns.c.type == TxType.AWARD.value,
                lots.c.created_at_us > start,
                lots.c.created_at_us <= as_of_us,
            )
            .group_by(lots.c.wallet_id)
        )
    else:
        events = t.customer_events
        query = (
            select(events.c.wallet_id, func.sum(events.c.amount - events.c.returned_amount))
            .where(
                events.c.wallet_id.in_(wallet_ids),
                events.c.type == "PURCHASE",
                events.c.currency == program.asset,
                events.c.occurred_at_us > start,
                events.c.occurred_at_us <= as_of_us,
            )
            .group_by(events.c.wallet_id)
        )
    amounts = {wallet_id: 0 for wallet_id in wallet_ids}
    for row in await conn.execute(query):
        amounts[str(row[0])] = int(row[1] or 0)
    return amounts


async def evaluate(
    tx: PostingTx,
    wallet_ids: Iterable[str],
    as_of_us: int,
    *,
    cause: str,
    run_id: str | None = None,
) -> int:
    """Re-evaluate the tiers of `wallet_ids` (those of schemes with a programme) as of
    `as_of_us`; record and announce every change. Returns how many wallets were evaluated."""
    w, s = t.wallets, t.schemes
    rows = await tx.conn.execute(
        select(w.c.id, w.c.scheme_id, w.c.tier_id, s.c.tier_program)
        .select_from(w.join(s, s.c.id == w.c.scheme_id))
        .where(w.c.id.in_(sorted(set(wallet_ids))), s.c.tier_program.is_not(None))
        .order_by(w.c.id)
    )
    by_scheme: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    programs: dict[str, TierProgram] = {}
    for row in rows:
        by_scheme[row.scheme_id].append((row.id, row.tier_id))
        programs[row.scheme_id] = TierProgram.from_dict(json.loads(row.tier_program))
    evaluated = 0
    for scheme_id, wallets in by_scheme.items():
        program = programs[scheme_id]
        amounts = await qualifying(tx.conn, program, [i for i, _ in wallets], as_of_us)
        for wallet_id, current in wallets:
            target = program.tier_for(amounts[wallet_id])
            if target != current:
                await _change(
                    tx, scheme_id, wallet_id, current, target, amounts[wallet_id], cause, run_id
                )
            evaluated += 1
        if cause == REVIEW:
            await tx.conn.execute(
                update(w)
                .where(w.c.id.in_([i for i, _ in wallets]))
                .values(tier_checked_us=as_of_us)
            )
    return evaluated


async def _change(
    tx: PostingTx,
    scheme_id: str,
    wallet_id: str,
    current: str | None,
    target: str | None,
    amount: int,
    cause: str,
    run_id: str | None,
) -> None:
    await tx.conn.execute(
        update(t.wallets)
        .where(t.wallets.c.id == wallet_id)
        .values(tier_id=target, tier_since_us=tx.now_us if target else None)
    )
    change_id = new_id("tch")
    await tx.conn.execute(
        t.tier_changes.insert().values(
            id=change_id,
            wallet_id=wallet_id,
            scheme_id=scheme_id,
            from_tier=current,
            to_tier=target,
            qualifying=amount,
            cause=cause,
            run_id=run_id,
            created_at_us=tx.now_us,
        )
    )
    await append_event(
        tx.conn,
        event_type="TIER_CHANGED",
        scheme_id=scheme_id,
        wallet_id=wallet_id,
        now_us=tx.now_us,
        payload={
            "tier_change_id": change_id,
            "from_tier_id": current or "",
            "to_tier_id": target or "",
            "qualifying_amount": amount,
            "cause": cause,
        },
    )


async def refresh_activity(tx: PostingTx) -> None:
    """Re-evaluate the wallets this transaction's writes marked, as of its time."""
    if tx.tier_activity:
        await evaluate(tx, tx.tier_activity, tx.now_us, cause=ACTIVITY)
        tx.tier_activity.clear()


async def review_chunk(tx: PostingTx, run_id: str, as_of_us: int, chunk_max: int) -> int:
    """Evaluate up to `chunk_max` wallets not yet evaluated for this run's as-of time."""
    w, s = t.wallets, t.schemes
    due = await tx.conn.execute(
        select(w.c.id)
        .select_from(w.join(s, s.c.id == w.c.scheme_id))
        .where(
            s.c.tier_program.is_not(None),
            w.c.status.in_(_REVIEWED),
            or_(w.c.tier_checked_us.is_(None), w.c.tier_checked_us < as_of_us),
        )
        .order_by(w.c.id)
        .limit(chunk_max)
    )
    wallet_ids = [row.id for row in due]
    if not wallet_ids:
        return 0
    return await evaluate(tx, wallet_ids, as_of_us, cause=REVIEW, run_id=run_id)
