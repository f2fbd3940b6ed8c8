"""Customer events in: evaluate the scheme's active offers and post every award atomically.

Within one database transaction the wallet and the scheme's ACTIVE offers are locked (in id
order, on PostgreSQL; SQLite has one writer), the offers' use by this wallet is read, the
domain decides the awards, and each award is posted with its use counted: caps and budgets
hold under any number of concurrent events. A dry run (`evaluate_event`) reads the same
numbers and writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain import contributions, rewards
from loyalty_ledger.domain.contributions import Contribution, ContributorKind
from loyalty_ledger.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from loyalty_ledger.domain.expiry import ExpiryPolicy
from loyalty_ledger.domain.offer_lifecycle import OfferStatus
from loyalty_ledger.domain.spend_order import Funding
from loyalty_ledger.domain.timeutil import from_us, to_us
from loyalty_ledger.ledger import merchants
from loyalty_ledger.ledger import offers as offer_store
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.engine import CreditCommand, Tx
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import (
    SchemeRecord,
    TransactionRecord,
    TxType,
    WalletRecord,
    WalletStatus,
)

QUALIFYING = "QUALIFYING"  # offer_usage window counting qualifying purchases


@dataclass(frozen=True)
class AwardSettings:
    """How an offer's ON_ACCOUNT awards become lots (the API decodes them from the offer)."""

    sponsor_id: str
    expiry_policy: ExpiryPolicy | None
    activation_delay_us: int
    merchant_ids: tuple[str, ...]
    product_ids: tuple[str, ...]
    contributions: tuple[Contribution, ...] = ()  # the offer's own; () for the fallbacks

    def shares(self, scheme: SchemeRecord) -> Sequence[Contribution]:
        """Who funds the offer's awards: its own shares, else its sponsor, else the scheme's
        shares, else the event's merchant."""
        if self.contributions:
            return self.contributions
        if self.sponsor_id:
            whole = contributions.BASIS_POINTS_WHOLE
            return (Contribution(ContributorKind.SPONSOR, self.sponsor_id, whole),)
        return scheme.contributions or contributions.EVENT_MERCHANT_PAYS


Decoder = Callable[[offer_store.OfferRecord], tuple[rewards.Offer, AwardSettings]]


@dataclass(frozen=True)
class PostedAward:
    award: rewards.Award
    wallet_id: str
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
        rewards.Context(
            frozenset(wallet.tags),
            wallet.tier_id,
            frozenset(await merchants.merchant_groups(reader.conn, scheme.id, event.merchant_id)),
        ),
    )
    keys = {w.value: p for w, p in periods.items()}
    return scheme, {k: settings for k, (_, settings) in decoded.items()}, evaluation, keys


async def evaluate_event(
    reader: Reader, wallet_id: str, event: rewards.CustomerEvent, decode: Decoder
) -> list[PostedAward]:
    """What SubmitEvent would award now, writing nothing (and refusing what it refuses)."""
    wallet = await reader.get_wallet(wallet_id)
    Tx.require_active(wallet)
    _, _, evaluation, _ = await _evaluate(reader, wallet, event, decode, lock=False)
    return [PostedAward(a, wallet.id) for a in evaluation.awards]


async def submit_event(
    tx: Tx, wallet_id: str, event: rewards.CustomerEvent, reference: str, decode: Decoder
) -> tuple[str, list[PostedAward]]:
    """Evaluate the event and post every award, counting caps and budgets, atomically.
    Returns the recorded event's id (for ReverseEvent) and the awards."""
    wallet = await tx.lock_active_wallet(wallet_id)
    referrer = None
    if (
        event.type is rewards.EventType.PURCHASE
        and wallet.referred_by is not None
        and wallet.referral_rewarded_at_us is None
    ):
        # Wallets before offers, always: the referrer's lock is taken before the offers'.
        referrer = await tx.lock_wallet_for_reversal(wallet.referred_by)  # open, maybe frozen
    scheme, settings, evaluation, periods = await _evaluate(tx, wallet, event, decode, lock=True)
    event_id = new_id("cev")
    await tx.conn.execute(
        t.customer_events.insert().values(
            id=event_id,
            wallet_id=wallet.id,
            scheme_id=wallet.scheme_id,
            type=event.type.value,
            amount=event.amount,
            currency=event.currency,
            items=json.dumps([[i.product_id, i.quantity, i.unit_price] for i in event.items]),
            reference=reference,
            merchant_id=event.merchant_id,
            occurred_at_us=to_us(event.occurred_at),
            created_at_us=tx.now_us,
        )
    )
    posted = await _post(
        tx, scheme, wallet, event, evaluation, settings, periods, reference, event_id
    )
    if scheme.tier_program is not None:
        tx.tier_activity.add(wallet.id)  # a purchase counts towards a SPEND tier programme
    if referrer is not None:
        posted += await _reward_referrer(tx, wallet, referrer, event, reference, decode, event_id)
    return event_id, posted


async def _reward_referrer(
    tx: Tx,
    referee: WalletRecord,
    referrer: WalletRecord,
    purchase: rewards.CustomerEvent,
    reference: str,
    decode: Decoder,
    event_id: str,
) -> list[PostedAward]:
    """The referee's purchase as a REFERRAL event of the referrer: REFERRAL offers judge it
    (their conditions apply to the purchase) and award the referrer, once per referee."""
    event = replace(purchase, type=rewards.EventType.REFERRAL)
    scheme, settings, evaluation, periods = await _evaluate(tx, referrer, event, decode, lock=True)
    if not evaluation.awards:
        return []  # not qualified yet: a later purchase may be the first that qualifies
    posted = await _post(
        tx, scheme, referrer, event, evaluation, settings, periods, reference, event_id
    )
    await tx.conn.execute(
        update(t.wallets)
        .where(t.wallets.c.id == referee.id)
        .values(referral_rewarded_at_us=tx.now_us)
    )
    return posted


async def _post(
    tx: Tx,
    scheme: SchemeRecord,
    wallet: WalletRecord,
    event: rewards.CustomerEvent,
    evaluation: rewards.Evaluation,
    settings: dict[str, AwardSettings],
    periods: dict[str, str],
    reference: str,
    event_id: str,
) -> list[PostedAward]:
    """Post each award to `wallet`, one entry per funding party, record each part under the
    event, and count caps and budget once per award."""
    posted = []
    for award in evaluation.awards:
        how = settings[award.offer_id]
        parts = contributions.split(award.amount, how.shares(scheme), event.merchant_id)
        for sponsor, part in parts:
            share = replace(award, amount=part)
            if len(parts) > 1:
                share = replace(share, explanation=f"{award.explanation}; part funded by {sponsor}")
            posted.append(await _post_part(tx, wallet, event, share, how, sponsor, reference))
            await tx.conn.execute(
                t.event_awards.insert().values(
                    transaction_id=posted[-1].transaction_id,
                    event_id=event_id,
                    offer_id=award.offer_id,
                    lot_id=posted[-1].lot_id or None,
                    asset=award.asset,
                    amount=part,
                    instant=award.instant,
                    sponsor_id=sponsor,
                    merchant_id=event.merchant_id,
                )
            )
        await _count(tx.conn, award.offer_id, wallet.id, periods, award.amount)
        await offer_store.spend_budget(tx.conn, award.offer_id, award.amount)
    for offer_id in evaluation.qualified:
        await _bump(tx.conn, offer_id, wallet.id, QUALIFYING, "", 1, 0)
    return posted


async def _post_part(
    tx: Tx,
    wallet: WalletRecord,
    event: rewards.CustomerEvent,
    award: rewards.Award,
    how: AwardSettings,
    sponsor: str,
    reference: str,
) -> PostedAward:
    """One party's part of an award: an INSTANT discount, or a lot it sponsors."""
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
        return PostedAward(award, wallet.id, txn.id)
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
    return PostedAward(award, wallet.id, txn.id, lot.id)


# -- birthdays --------------------------------------------------------------------------------


async def birthday_chunk(
    tx: Tx, run_id: str | None, as_of_us: int, chunk_max: int, decode: Decoder
) -> int:
    """Submit a BIRTHDAY event for up to `chunk_max` ACTIVE wallets whose birthday is the local
    date of `as_of_us` in their scheme and that had none this local year. Returns how many."""
    w, done_table = t.wallets, t.birthday_events
    schemes = await tx.conn.execute(
        select(t.offers.c.scheme_id)
        .where(t.offers.c.status == OfferStatus.ACTIVE.value)
        .distinct()
        .order_by(t.offers.c.scheme_id)
    )
    done = 0
    for scheme_id in [row.scheme_id for row in schemes]:
        scheme = await tx.get_scheme(scheme_id)
        local = from_us(as_of_us).astimezone(ZoneInfo(scheme.timezone))
        celebrated = done_table.c.wallet_id == w.c.id
        rows = await tx.conn.execute(
            select(w.c.id)
            .where(
                w.c.scheme_id == scheme.id,
                w.c.status == WalletStatus.ACTIVE.value,
                or_(
                    *(
                        and_(w.c.birth_month == month, w.c.birth_day == day)
                        for month, day in rewards.birthdays_on(local.date())
                    )
                ),
                ~select(done_table.c.wallet_id)
                .where(celebrated, done_table.c.year == local.year)
                .exists(),
            )
            .order_by(w.c.id)
            .limit(chunk_max - done)
        )
        for wallet_id in [row.id for row in rows]:
            event = rewards.CustomerEvent(rewards.EventType.BIRTHDAY, from_us(as_of_us))
            event_id, _ = await submit_event(tx, wallet_id, event, f"birthday-{local.year}", decode)
            await tx.conn.execute(
                done_table.insert().values(
                    wallet_id=wallet_id,
                    year=local.year,
                    event_id=event_id,
                    run_id=run_id,
                    created_at_us=tx.now_us,
                )
            )
            done += 1
        if done >= chunk_max:
            break
    return done


# -- returns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AwardReversal:
    offer_id: str
    award_transaction_id: str
    reversed: int
    already_spent: int
    transaction_id: str


@dataclass(frozen=True)
class EventReversal:
    event_id: str
    returned_amount: int
    total_returned_amount: int
    reversals: list[AwardReversal]


def _returned_value(
    event: Any, returned: int | dict[str, int] | None
) -> tuple[int, dict[str, int]]:
    """The value a return counts, and the event's returned quantities after it."""
    already: dict[str, int] = json.loads(event.returned_items)
    left = event.amount - event.returned_amount
    if returned is None:
        return left, {pid: qty for pid, qty, _ in json.loads(event.items)}
    if isinstance(returned, int):
        if not 1 <= returned <= left:
            raise FailedPrecondition(
                f"event {event.id} has {left} left to return",
                reason="RETURN_EXCEEDS_EVENT",
                returnable=left,
            )
        return returned, already
    bought: dict[str, tuple[int, int]] = {}
    for pid, qty, price in json.loads(event.items):
        count, _ = bought.get(pid, (0, price))
        bought[pid] = (count + qty, price)
    value, after = 0, dict(already)
    for pid, qty in returned.items():
        if pid not in bought:
            raise InvalidArgument.single("items", f"{pid!r} is not in the event's basket")
        if after.get(pid, 0) + qty > bought[pid][0]:
            raise FailedPrecondition(
                f"only {bought[pid][0] - after.get(pid, 0)} of {pid} are left to return",
                reason="RETURN_EXCEEDS_EVENT",
                product_id=pid,
            )
        after[pid] = after.get(pid, 0) + qty
        value += qty * bought[pid][1]
    return min(value, left), after


async def reverse_event(
    tx: Tx, event_id: str, returned: int | dict[str, int] | None, reason: str
) -> EventReversal:
    """Reverse the event's awards in proportion to what has been returned in all: after
    returns of R out of an event of A, each award has lost floor(award x R / A) (all of it
    when everything came back, or when the event had no amount)."""
    ce = t.customer_events
    event = (await tx.conn.execute(select(ce).where(ce.c.id == event_id))).first()
    if event is None:
        raise NotFound("event", event_id)
    await tx.lock_wallet_for_reversal(event.wallet_id)
    tx.tier_activity.add(event.wallet_id)  # a return counts against a SPEND tier programme
    # Re-read under the wallet lock: a concurrent return of this event has committed by now.
    event = (await tx.conn.execute(select(ce).where(ce.c.id == event_id))).one()
    awards = list(
        await tx.conn.execute(
            select(t.event_awards)
            .where(t.event_awards.c.event_id == event_id)
            .order_by(t.event_awards.c.offer_id, t.event_awards.c.transaction_id)
        )
    )
    value, returned_items = _returned_value(event, returned)
    total = event.returned_amount + value
    if event.amount == 0 and all(a.reversed == a.amount for a in awards):
        raise FailedPrecondition(
            f"event {event_id} was reversed already", reason="ALREADY_REVERSED"
        )
    if event.amount and value == 0:
        raise FailedPrecondition(
            f"event {event_id} has nothing left to return", reason="ALREADY_REVERSED"
        )
    reversals = []
    for award in awards:
        target = award.amount if event.amount == 0 else award.amount * total // event.amount
        delta = target - award.reversed
        if delta <= 0:
            continue
        original = await tx.get_transaction(award.transaction_id)
        if award.instant:
            txn: TransactionRecord | None = await tx.reverse_instant_part(
                original,
                award.asset,
                delta,
                sponsor_id=award.sponsor_id,
                merchant_id=award.merchant_id,
                reason=reason,
            )
            short = 0
        else:
            txn, short = await tx.reverse_award_part(
                award.transaction_id, award.lot_id, delta, reason
            )
        await tx.conn.execute(
            update(t.event_awards)
            .where(t.event_awards.c.transaction_id == award.transaction_id)
            .values(reversed=target)
        )
        # What came back to the sponsor may be awarded again.
        await offer_store.spend_budget(tx.conn, award.offer_id, -(delta - short))
        reversals.append(
            AwardReversal(award.offer_id, award.transaction_id, delta, short, txn.id if txn else "")
        )
    await tx.conn.execute(
        update(ce)
        .where(ce.c.id == event_id)
        .values(returned_amount=total, returned_items=json.dumps(returned_items, sort_keys=True))
    )
    return EventReversal(event_id, value, total, reversals)


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
