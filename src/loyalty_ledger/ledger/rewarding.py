"""Customer events in: evaluate the scheme's active offers and post every award atomically.

Within one database transaction the wallet and the scheme's ACTIVE offers are locked (in id
order, on PostgreSQL; SQLite has one writer), the offers' use by this wallet is read, the
domain decides the awards, and each award is posted with its use counted: caps and budgets
hold under any number of concurrent events. A dry run (`evaluate_event`) reads the same
numbers and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain import rewards
from loyalty_ledger.domain.expiry import ExpiryPolicy
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.ledger import offers as offer_store
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import OPERATOR_SPONSOR, CreditCommand, Tx
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import SchemeRecord, TxType, WalletRecord

QUALIFYING = "QUALIFYING"  # offer_usage window counting qualifying purchases


@dataclass(frozen=True)
class AwardSettings:
    """How an offer's ON_ACCOUNT awards become lots (the API decodes them from the offer)."""

    sponsor_id: str
    expiry_policy: ExpiryPolicy | None
    activation_delay_us: int
    merchant_ids: tuple[str, ...]
    product_ids: tuple[str, ...]


Decoder = Callable[[offer_store.OfferRecord], tuple[rewards.Offer, AwardSettings]]


@dataclass(frozen=True)
class PostedAward:
    award: rewards.Award
    transaction_id: str = ""
    lot_id: str = ""


async def _usage(
    conn: AsyncConnection,
    wallet_id: str,
    offers: list[offer_store.OfferRecord],
    periods: dict[rewards.CapWindow, str],
) -> dict[str, rewards.OfferUsage]:
    """What each offer has given the wallet in the windows `periods` names."""
    u = t.offer_usage
    windows = [and_(u.c.cap_window == w.value, u.c.period_key == p) for w, p in periods.items()]
    windows.append(and_(u.c.cap_window == QUALIFYING, u.c.period_key == ""))
    rows = await conn.execute(
        select(u).where(
            u.c.wallet_id == wallet_id, u.c.offer_id.in_([o.id for o in offers]), or_(*windows)
        )
    )
    counts: dict[str, dict[rewards.CapWindow, int]] = {o.id: {} for o in offers}
    amounts: dict[str, dict[rewards.CapWindow, int]] = {o.id: {} for o in offers}
    qualifying: dict[str, int] = {}
    for row in rows:
        if row.cap_window == QUALIFYING:
            qualifying[row.offer_id] = row.award_count
        else:
            counts[row.offer_id][rewards.CapWindow(row.cap_window)] = row.award_count
            amounts[row.offer_id][rewards.CapWindow(row.cap_window)] = row.award_amount
    return {
        o.id: rewards.OfferUsage(
            count=counts[o.id],
            amount=amounts[o.id],
            budget_used=o.budget_used,
            qualifying_count=qualifying.get(o.id, 0),
        )
        for o in offers
    }


async def _evaluate(
    reader: Reader,
    wallet: WalletRecord,
    event: rewards.CustomerEvent,
    decode: Decoder,
    *,
    lock: bool,
) -> tuple[SchemeRecord, dict[str, AwardSettings], rewards.Evaluation, dict[str, str]]:
    scheme = await reader.get_scheme(wallet.scheme_id)
    tz = ZoneInfo(scheme.timezone)
    records = (
        await offer_store.active_offers(reader.conn, scheme.id)
        if lock
        else await offer_store.list_active_offers(reader.conn, scheme.id)
    )
    decoded = {r.id: decode(r) for r in records}
    periods = rewards.period_keys(event.occurred_at, tz)
    usage = await _usage(reader.conn, wallet.id, records, periods) if records else {}
    evaluation = rewards.evaluate(
        event,
        [offer for offer, _ in decoded.values()],
        usage,
        tz,
        scheme.assets.get(event.currency, 0),
    )
    keys = {w.value: p for w, p in periods.items()}
    return scheme, {k: settings for k, (_, settings) in decoded.items()}, evaluation, keys


async def evaluate_event(
    reader: Reader, wallet_id: str, event: rewards.CustomerEvent, decode: Decoder
) -> list[PostedAward]:
    """What SubmitEvent would award now, writing nothing."""
    wallet = await reader.get_wallet(wallet_id)
    _, _, evaluation, _ = await _evaluate(reader, wallet, event, decode, lock=False)
    return [PostedAward(a) for a in evaluation.awards]


async def submit_event(
    tx: Tx, wallet_id: str, event: rewards.CustomerEvent, reference: str, decode: Decoder
) -> list[PostedAward]:
    """Evaluate the event and post every award, counting caps and budgets, atomically."""
    wallet = await tx.lock_active_wallet(wallet_id)
    scheme, settings, evaluation, periods = await _evaluate(tx, wallet, event, decode, lock=True)
    posted = []
    for award in evaluation.awards:
        how = settings[award.offer_id]
        sponsor = how.sponsor_id or event.merchant_id or OPERATOR_SPONSOR
        metadata = {"offer_id": award.offer_id}
        if award.instant:
            txn = await tx.instant_discount(
                wallet,
                award.asset,
                award.amount,
                sponsor_id=sponsor,
                merchant_id=event.merchant_id,
                reference=reference,
                metadata=metadata | {"spend_method": "INSTANT"},
            )
            posted.append(PostedAward(award, txn.id))
        else:
            txn, lot = await tx.credit(
                CreditCommand(
                    wallet.id,
                    TxType.AWARD,
                    award.asset,
                    award.amount,
                    Funding.PROMOTIONAL,
                    sponsor,
                    expire_at_us=None,
                    expiry_policy=how.expiry_policy,
                    available_at_us=tx.now_us + how.activation_delay_us,
                    merchant_ids=how.merchant_ids,
                    product_ids=how.product_ids,
                    reference=reference,
                    metadata=metadata,
                )
            )
            posted.append(PostedAward(award, txn.id, lot.id))
        await _count(tx.conn, award.offer_id, wallet.id, periods, award.amount)
        await offer_store.spend_budget(tx.conn, award.offer_id, award.amount)
    for offer_id in evaluation.qualified:
        await _bump(tx.conn, offer_id, wallet.id, QUALIFYING, "", 1, 0)
    assert scheme.id == wallet.scheme_id
    return posted


async def _count(
    conn: AsyncConnection, offer_id: str, wallet_id: str, periods: dict[str, str], amount: int
) -> None:
    for window, period in periods.items():
        await _bump(conn, offer_id, wallet_id, window, period, 1, amount)


async def _bump(
    conn: AsyncConnection,
    offer_id: str,
    wallet_id: str,
    window: str,
    period: str,
    count: int,
    amount: int,
) -> None:
    """Add to a usage row, creating it at zero first (the offers are locked: no race)."""
    u = t.offer_usage
    key = and_(
        u.c.offer_id == offer_id,
        u.c.wallet_id == wallet_id,
        u.c.cap_window == window,
        u.c.period_key == period,
    )
    result = await conn.execute(
        update(u)
        .where(key)
        .values(award_count=u.c.award_count + count, award_amount=u.c.award_amount + amount)
    )
    if result.rowcount == 0:
        await conn.execute(
            u.insert().values(
                offer_id=offer_id,
                wallet_id=wallet_id,
                cap_window=window,
                period_key=period,
                award_count=count,
                award_amount=amount,
            )
        )
