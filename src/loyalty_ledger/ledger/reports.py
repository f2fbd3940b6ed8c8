"""Finance reports: liability, breakage, offer performance and participation.

Every figure is aggregated in the database (SQLAlchemy Core, the same SQL on SQLite and
PostgreSQL). Calendar months are those of the scheme's IANA timezone: their boundaries are
computed here in Python (zoneinfo) and rows are put in their month by a CASE over those
instants, so no database timezone function is needed. See docs/reports.md for the
definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, func, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import CTE

from loyalty_ledger.domain.timeutil import from_us, to_us
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.records import TxType, WalletStatus

# The most calendar months one report window may span (the CASE that buckets rows into
# months has one branch per month).
MONTHS_MAX = 120

# Entries that change what a lot still owes its holder. HOLD and VOID only move value
# between `remaining` and `held`, both still owed, so they are not here. REFUND allocations
# are negative (value returned).
_OUTSTANDING_TYPES = [
    TxType.SPEND.value,
    TxType.CAPTURE.value,
    TxType.EXPIRE.value,
    TxType.REVERSAL.value,
    TxType.TRANSFER.value,
    TxType.MERGE.value,
    TxType.REFUND.value,
]
_REDEEMING_TYPES = [TxType.SPEND.value, TxType.CAPTURE.value, TxType.REFUND.value]

# How many generations of copies (transfers, merges, refund re-credits) of an award's lots
# the offer report follows: a copy of a copy of a copy is still counted for the offer.
COPY_DEPTH = 3


@dataclass(frozen=True)
class Month:
    """One calendar month of the scheme's timezone, clipped to a report window."""

    label: str  # "YYYY-MM"
    start_us: int  # inclusive
    end_us: int  # exclusive


def months_between(timezone: str, start_us: int, end_us: int) -> list[Month]:
    """The local calendar months overlapping [start, end), each clipped to the window."""
    zone = ZoneInfo(timezone)
    local = from_us(start_us).astimezone(zone)
    year, month = local.year, local.month
    months: list[Month] = []
    lower = start_us
    while lower < end_us:
        year_next, month_next = (year + 1, 1) if month == 12 else (year, month + 1)
        # Local midnight of the 1st; inside a DST gap zoneinfo maps it to the gap's end.
        boundary = (
            to_us(datetime(year_next, month_next, 1, tzinfo=zone)) if year_next <= 9999 else end_us
        )
        upper = min(boundary, end_us)
        months.append(Month(f"{year:04d}-{month:02d}", lower, upper))
        lower, year, month = upper, year_next, month_next
    return months


def month_count(timezone: str, start_us: int, end_us: int) -> int:
    """How many local months [start, end) overlaps, without building them."""
    zone = ZoneInfo(timezone)
    first, last = from_us(start_us).astimezone(zone), from_us(end_us - 1).astimezone(zone)
    return (last.year - first.year) * 12 + last.month - first.month + 1


def _month_index(column: ColumnElement[Any], months: list[Month]) -> ColumnElement[Any]:
    """The index in `months` of the month an instant (already inside the window) falls in."""
    if len(months) == 1:
        return literal_column("0")
    return case(
        *((column < m.end_us, literal_column(str(i))) for i, m in enumerate(months[:-1])),
        else_=literal_column(str(len(months) - 1)),
    )


def _in_window(column: ColumnElement[Any], months: list[Month]) -> ColumnElement[bool]:
    return and_(column >= months[0].start_us, column < months[-1].end_us)


# -- liability ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiabilityRow:
    asset: str
    funding: str
    sponsor_id: str
    amount: int


async def liability(conn: AsyncConnection, scheme_id: str, as_of_us: int) -> list[LiabilityRow]:
    """Value owed to holders at `as_of_us` (inclusive) by asset, funding and sponsor.

    Per lot: its amount once created, less what entries up to then took out of it for good
    (spends, captures, expiries, reversals, moves to another wallet), plus refunds back into
    it. Held value is still owed. As of now this equals the lots' `remaining + held`.
    """
    lots, alloc, txs = t.lots, t.allocations, t.transactions
    source = t.transactions.alias("source")
    # A lot a REFUND re-credited (RECREDIT policy) is not counted by its amount: the REFUND's
    # allocation on the expired lot already brings that value back (same asset, funding and
    # sponsor, same instant), and the new lot's own debits are counted like any other.
    credited = (
        select(lots.c.asset, lots.c.funding, lots.c.sponsor_id, lots.c.amount.label("amount"))
        .select_from(lots.outerjoin(source, source.c.id == lots.c.source_transaction_id))
        .where(
            lots.c.scheme_id == scheme_id,
            lots.c.created_at_us <= as_of_us,
            func.coalesce(source.c.type, "") != TxType.REFUND.value,
        )
    )
    taken = (
        select(lots.c.asset, lots.c.funding, lots.c.sponsor_id, (-alloc.c.amount).label("amount"))
        .select_from(
            alloc.join(txs, txs.c.id == alloc.c.transaction_id).join(
                lots, lots.c.id == alloc.c.lot_id
            )
        )
        .where(
            lots.c.scheme_id == scheme_id,
            txs.c.scheme_id == scheme_id,
            txs.c.created_at_us <= as_of_us,
            txs.c.type.in_(_OUTSTANDING_TYPES),
        )
    )
    parts = union_all(credited, taken).subquery("parts")
    sponsor = func.coalesce(parts.c.sponsor_id, "")
    total = func.sum(parts.c.amount)
    rows = await conn.execute(
        select(parts.c.asset, parts.c.funding, sponsor.label("sponsor_id"), total.label("amount"))
        .group_by(parts.c.asset, parts.c.funding, sponsor)
        .having(total != 0)
        .order_by(parts.c.asset, parts.c.funding, sponsor)
    )
    return [LiabilityRow(r.asset, r.funding, r.sponsor_id, int(r.amount)) for r in rows]


# -- breakage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakageRow:
    month: str
    asset: str
    funding: str
    sponsor_id: str
    amount: int


async def breakage(conn: AsyncConnection, scheme_id: str, months: list[Month]) -> list[BreakageRow]:
    """Value expired (EXPIRE allocations) per month of the EXPIRE entry, asset, funding and
    sponsor of the lot."""
    lots, alloc, txs = t.lots, t.allocations, t.transactions
    expired = (
        select(
            _month_index(txs.c.created_at_us, months).label("month"),
            lots.c.asset,
            lots.c.funding,
            func.coalesce(lots.c.sponsor_id, "").label("sponsor_id"),
            alloc.c.amount,
        )
        .select_from(
            alloc.join(txs, txs.c.id == alloc.c.transaction_id).join(
                lots, lots.c.id == alloc.c.lot_id
            )
        )
        .where(
            txs.c.type == TxType.EXPIRE.value,
            txs.c.scheme_id == scheme_id,
            lots.c.scheme_id == scheme_id,
            _in_window(txs.c.created_at_us, months),
        )
        .subquery("expired")
    )
    keys = [expired.c.month, expired.c.asset, expired.c.funding, expired.c.sponsor_id]
    total = func.sum(expired.c.amount)
    rows = await conn.execute(
        select(*keys, total.label("amount")).group_by(*keys).having(total != 0).order_by(*keys)
    )
    return [
        BreakageRow(months[r.month].label, r.asset, r.funding, r.sponsor_id, int(r.amount))
        for r in rows
    ]


# -- offer performance ------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferMonthRow:
    offer_id: str
    asset: str
    month: str
    awarded: int
    redeemed: int
    expired: int


@dataclass(frozen=True)
class OfferOutstanding:
    offer_id: str
    asset: str
    amount: int


def _award_lots(scheme_id: str) -> CTE:
    """(lot_id, wallet_id, offer_id) of every lot holding an offer's ON_ACCOUNT award: the lots
    its AWARD entries created, and up to COPY_DEPTH generations of their copies
    (`origin_lot_id`)."""
    lots, ea = t.lots, t.event_awards
    level = (
        select(lots.c.id.label("lot_id"), lots.c.wallet_id, ea.c.offer_id)
        .select_from(lots.join(ea, ea.c.transaction_id == lots.c.source_transaction_id))
        .where(lots.c.scheme_id == scheme_id)
        .cte("award_lots_0")
    )
    levels = [level]
    for depth in range(1, COPY_DEPTH + 1):
        level = (
            select(lots.c.id.label("lot_id"), lots.c.wallet_id, level.c.offer_id)
            .select_from(lots.join(level, lots.c.origin_lot_id == level.c.lot_id))
            .cte(f"award_lots_{depth}")
        )
        levels.append(level)
    return union_all(*(select(lv.c.lot_id, lv.c.wallet_id, lv.c.offer_id) for lv in levels)).cte(
        "award_lots"
    )


async def offer_months(
    conn: AsyncConnection, scheme_id: str, months: list[Month]
) -> list[OfferMonthRow]:
    """Per offer, asset and month: awarded (AWARD entries), redeemed (spends and captures of
    its lots less refunds, plus INSTANT discounts when given) and expired value."""
    ea, txs, alloc, offers = t.event_awards, t.transactions, t.allocations, t.offers
    zero: ColumnElement[Any] = literal_column("0")
    awards = (
        select(
            ea.c.offer_id,
            ea.c.asset,
            _month_index(txs.c.created_at_us, months).label("month"),
            ea.c.amount.label("awarded"),
            case((ea.c.instant.is_(True), ea.c.amount), else_=zero).label("redeemed"),
            zero.label("expired"),
        )
        .select_from(
            ea.join(txs, txs.c.id == ea.c.transaction_id).join(offers, offers.c.id == ea.c.offer_id)
        )
        .where(
            offers.c.scheme_id == scheme_id,
            txs.c.scheme_id == scheme_id,
            _in_window(txs.c.created_at_us, months),
        )
    )
    family = _award_lots(scheme_id)
    used = (
        select(
            family.c.offer_id,
            alloc.c.asset,
            _month_index(txs.c.created_at_us, months).label("month"),
            zero.label("awarded"),
            case((txs.c.type.in_(_REDEEMING_TYPES), alloc.c.amount), else_=zero).label("redeemed"),
            case((txs.c.type == TxType.EXPIRE.value, alloc.c.amount), else_=zero).label("expired"),
        )
        .select_from(
            family.join(
                alloc,  # by wallet and lot: the allocations' index
                (alloc.c.wallet_id == family.c.wallet_id) & (alloc.c.lot_id == family.c.lot_id),
            ).join(txs, txs.c.id == alloc.c.transaction_id)
        )
        .where(
            txs.c.scheme_id == scheme_id,
            txs.c.type.in_([*_REDEEMING_TYPES, TxType.EXPIRE.value]),
            _in_window(txs.c.created_at_us, months),
        )
    )
    parts = union_all(awards, used).subquery("parts")
    keys = [parts.c.offer_id, parts.c.asset, parts.c.month]
    sums = [func.sum(parts.c[name]).label(name) for name in ("awarded", "redeemed", "expired")]
    rows = await conn.execute(select(*keys, *sums).group_by(*keys).order_by(*keys))
    out = [
        OfferMonthRow(
            r.offer_id,
            r.asset,
            months[r.month].label,
            int(r.awarded),
            int(r.redeemed),
            int(r.expired),
        )
        for r in rows
    ]
    return [r for r in out if r.awarded or r.redeemed or r.expired]


async def offer_outstanding(
    conn: AsyncConnection, scheme_id: str, offer_ids: list[str]
) -> list[OfferOutstanding]:
    """Per offer and asset: what its award lots (and their copies) hold now, remaining and
    held."""
    if not offer_ids:
        return []
    family = _award_lots(scheme_id)
    lots = t.lots
    total = func.sum(lots.c.remaining + lots.c.held)
    rows = await conn.execute(
        select(family.c.offer_id, lots.c.asset, total.label("amount"))
        .select_from(family.join(lots, lots.c.id == family.c.lot_id))
        .where(family.c.offer_id.in_(offer_ids))
        .group_by(family.c.offer_id, lots.c.asset)
    )
    return [OfferOutstanding(r.offer_id, r.asset, int(r.amount)) for r in rows]


async def offer_definitions(conn: AsyncConnection, offer_ids: list[str]) -> dict[str, str]:
    """The stored definitions (opaque JSON) of these offers."""
    if not offer_ids:
        return {}
    rows = await conn.execute(
        select(t.offers.c.id, t.offers.c.definition).where(t.offers.c.id.in_(offer_ids))
    )
    return {r.id: r.definition for r in rows}


# -- participation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Participation:
    by_status: dict[WalletStatus, int]
    sign_ups: list[tuple[str, int]]  # (month, wallets created), every month of the window


async def participation(
    conn: AsyncConnection, scheme_id: str, months: list[Month]
) -> Participation:
    w = t.wallets
    statuses = await conn.execute(
        select(w.c.status, func.count().label("wallets"))
        .where(w.c.scheme_id == scheme_id)
        .group_by(w.c.status)
    )
    by_status = {status: 0 for status in WalletStatus}
    for r in statuses:
        by_status[WalletStatus(r.status)] = int(r.wallets)
    created = (
        select(_month_index(w.c.created_at_us, months).label("month"))
        .where(w.c.scheme_id == scheme_id, _in_window(w.c.created_at_us, months))
        .subquery("created")
    )
    counts = {
        r.month: int(r.wallets)
        for r in await conn.execute(
            select(created.c.month, func.count().label("wallets")).group_by(created.c.month)
        )
    }
    return Participation(by_status, [(m.label, counts.get(i, 0)) for i, m in enumerate(months)])
