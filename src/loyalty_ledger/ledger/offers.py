"""Offers in the database: definitions, their life cycle and audit trail, per-wallet usage.

The definition (rule, conditions, award settings) is the API's JSON form of the offer and is
opaque here; the ledger keeps beside it what it must enforce itself: the status, the budget
and what has been used of it (a CHECK constraint refuses an overshoot), and a version that
numbers the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain.errors import InvalidArgument, NotFound
from loyalty_ledger.domain.offer_lifecycle import OfferStatus, check_editable, check_transition
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.paging import after_key, decode_token, encode_token
from loyalty_ledger.ledger.records import Page


@dataclass(frozen=True)
class OfferRecord:
    id: str
    scheme_id: str
    status: OfferStatus
    definition: str
    budget: int | None
    budget_used: int
    version: int
    copied_from_offer_id: str | None
    created_at_us: int
    updated_at_us: int

    @classmethod
    def from_row(cls, row: Any) -> OfferRecord:
        return cls(
            id=row.id,
            scheme_id=row.scheme_id,
            status=OfferStatus(row.status),
            definition=row.definition,
            budget=row.budget,
            budget_used=row.budget_used,
            version=row.version,
            copied_from_offer_id=row.copied_from_offer_id,
            created_at_us=row.created_at_us,
            updated_at_us=row.updated_at_us,
        )


@dataclass(frozen=True)
class OfferChangeRecord:
    offer_id: str
    version: int
    action: str
    status: OfferStatus
    reason: str
    snapshot: str  # the definition as it was after the change
    created_at_us: int


async def find_offer(conn: AsyncConnection, offer_id: str, *, lock: bool = False) -> OfferRecord:
    """One offer, or NOT_FOUND. With `lock`, the row is locked until commit (PostgreSQL)."""
    query = select(t.offers).where(t.offers.c.id == offer_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound("offer", offer_id)
    return OfferRecord.from_row(row)


async def list_offers(
    conn: AsyncConnection, scheme_id: str, status: OfferStatus | None, size: int, token: str
) -> Page[OfferRecord]:
    key_cols = [t.offers.c.created_at_us, t.offers.c.id]
    query = select(t.offers).where(t.offers.c.scheme_id == scheme_id)
    if status is not None:
        query = query.where(t.offers.c.status == status.value)
    after = decode_token("offers", token, 2)
    if after is not None:
        query = query.where(after_key(key_cols, after))
    rows = list(await conn.execute(query.order_by(*key_cols).limit(size + 1)))
    items = [OfferRecord.from_row(r) for r in rows[:size]]
    nxt = (
        encode_token("offers", [items[-1].created_at_us, items[-1].id]) if len(rows) > size else ""
    )
    return Page(items, nxt)


def _active_query(scheme_id: str) -> Any:
    return (
        select(t.offers)
        .where(t.offers.c.scheme_id == scheme_id, t.offers.c.status == OfferStatus.ACTIVE.value)
        .order_by(t.offers.c.id)
    )


async def list_active_offers(conn: AsyncConnection, scheme_id: str) -> list[OfferRecord]:
    """The scheme's ACTIVE offers in id order (a read: nothing locked)."""
    return [OfferRecord.from_row(r) for r in await conn.execute(_active_query(scheme_id))]


async def active_offers(conn: AsyncConnection, scheme_id: str) -> list[OfferRecord]:
    """The scheme's ACTIVE offers in id order, locked on PostgreSQL until commit: their budgets
    and usage are about to change. Id order: every event takes the locks in the same order."""
    query = _active_query(scheme_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return [OfferRecord.from_row(r) for r in await conn.execute(query)]


async def list_changes(
    conn: AsyncConnection, offer_id: str, size: int, token: str
) -> Page[OfferChangeRecord]:
    await find_offer(conn, offer_id)
    query = select(t.offer_changes).where(t.offer_changes.c.offer_id == offer_id)
    after = decode_token("offer_changes", token, 1)
    if after is not None:
        query = query.where(t.offer_changes.c.version > after[0])
    rows = list(await conn.execute(query.order_by(t.offer_changes.c.version).limit(size + 1)))
    items = [
        OfferChangeRecord(
            offer_id=r.offer_id,
            version=r.version,
            action=r.action,
            status=OfferStatus(r.status),
            reason=r.reason,
            snapshot=r.snapshot,
            created_at_us=r.created_at_us,
        )
        for r in rows[:size]
    ]
    nxt = encode_token("offer_changes", [items[-1].version]) if len(rows) > size else ""
    return Page(items, nxt)


async def _record_change(
    conn: AsyncConnection, offer: OfferRecord, action: str, reason: str, now_us: int
) -> None:
    await conn.execute(
        t.offer_changes.insert().values(
            offer_id=offer.id,
            version=offer.version,
            action=action,
            status=offer.status.value,
            reason=reason,
            snapshot=offer.definition,
            created_at_us=now_us,
        )
    )


def _check_budget(budget: int | None, used: int) -> None:
    if budget is not None and budget < max(used, 1):
        raise InvalidArgument.single(
            "offer.budget", f"must be at least 1 and at least what is already used ({used})"
        )


async def create_offer(
    conn: AsyncConnection,
    scheme_id: str,
    definition: str,
    budget: int | None,
    now_us: int,
    *,
    copied_from_offer_id: str | None = None,
    reason: str = "",
) -> OfferRecord:
    """A new DRAFT offer with version 1 of its audit trail."""
    scheme = (await conn.execute(select(t.schemes.c.id).where(t.schemes.c.id == scheme_id))).first()
    if scheme is None:
        raise NotFound("scheme", scheme_id)
    _check_budget(budget, 0)
    offer = OfferRecord(
        id=new_id("off"),
        scheme_id=scheme_id,
        status=OfferStatus.DRAFT,
        definition=definition,
        budget=budget,
        budget_used=0,
        version=1,
        copied_from_offer_id=copied_from_offer_id,
        created_at_us=now_us,
        updated_at_us=now_us,
    )
    await conn.execute(
        t.offers.insert().values(
            id=offer.id,
            scheme_id=offer.scheme_id,
            status=offer.status.value,
            definition=offer.definition,
            budget=offer.budget,
            budget_used=0,
            version=1,
            copied_from_offer_id=copied_from_offer_id,
            created_at_us=now_us,
            updated_at_us=now_us,
        )
    )
    await _record_change(conn, offer, "COPY" if copied_from_offer_id else "CREATE", reason, now_us)
    return offer


async def _save(
    conn: AsyncConnection, offer: OfferRecord, action: str, reason: str, now_us: int, **values: Any
) -> OfferRecord:
    version = offer.version + 1
    await conn.execute(
        update(t.offers)
        .where(t.offers.c.id == offer.id)
        .values(version=version, updated_at_us=now_us, **values)
    )
    saved = await find_offer(conn, offer.id)
    await _record_change(conn, saved, action, reason, now_us)
    return saved


async def update_offer(
    conn: AsyncConnection,
    offer_id: str,
    definition: str,
    budget: int | None,
    reason: str,
    now_us: int,
) -> OfferRecord:
    """Replace the definition of a DRAFT or PAUSED offer (audited)."""
    offer = await find_offer(conn, offer_id, lock=True)
    check_editable(offer.id, offer.status)
    _check_budget(budget, offer.budget_used)
    return await _save(conn, offer, "UPDATE", reason, now_us, definition=definition, budget=budget)


async def set_status(
    conn: AsyncConnection, offer_id: str, target: OfferStatus, reason: str, now_us: int
) -> OfferRecord:
    """Move an offer along its life cycle (audited)."""
    offer = await find_offer(conn, offer_id, lock=True)
    check_transition(offer.id, offer.status, target)
    return await _save(conn, offer, "STATUS", reason, now_us, status=target.value)


async def spend_budget(conn: AsyncConnection, offer_id: str, amount: int) -> None:
    """Count `amount` against the offer's budget; the caller clamped it to what is left (and
    the schema's CHECK refuses an overshoot whatever the caller did)."""
    await conn.execute(
        update(t.offers)
        .where(t.offers.c.id == offer_id)
        .values(budget_used=t.offers.c.budget_used + amount)
    )
