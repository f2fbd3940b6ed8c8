"""Merchants and merchant groups of a scheme.

A merchant id is what events, spends and holds already carry; registering it gives it a name
and groups (offers can target groups). Settlement does not require registration: every party
with activity is settled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain.contributions import OPERATOR
from loyalty_ledger.domain.errors import AlreadyExists, InvalidArgument, NotFound
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.paging import after_key, decode_token, encode_token
from loyalty_ledger.ledger.records import Page


@dataclass(frozen=True)
class MerchantRecord:
    scheme_id: str
    id: str
    name: str
    created_at_us: int
    updated_at_us: int
    group_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GroupRecord:
    scheme_id: str
    id: str
    name: str
    created_at_us: int


async def _groups_of(
    conn: AsyncConnection, scheme_id: str, merchant_ids: list[str]
) -> dict[str, list[str]]:
    m = t.merchant_group_members
    rows = await conn.execute(
        select(m.c.merchant_id, m.c.group_id)
        .where(m.c.scheme_id == scheme_id, m.c.merchant_id.in_(merchant_ids))
        .order_by(m.c.group_id)
    )
    groups: dict[str, list[str]] = {merchant_id: [] for merchant_id in merchant_ids}
    for row in rows:
        groups[row.merchant_id].append(row.group_id)
    return groups


def _merchant(row: Any, group_ids: list[str]) -> MerchantRecord:
    return MerchantRecord(
        row.scheme_id, row.id, row.name, row.created_at_us, row.updated_at_us, group_ids
    )


async def merchant_groups(conn: AsyncConnection, scheme_id: str, merchant_id: str) -> list[str]:
    """The groups a merchant id belongs to (none when it is not registered)."""
    if not merchant_id:
        return []
    return (await _groups_of(conn, scheme_id, [merchant_id]))[merchant_id]


async def get_merchant(conn: AsyncConnection, scheme_id: str, merchant_id: str) -> MerchantRecord:
    row = (
        await conn.execute(
            select(t.merchants).where(
                t.merchants.c.scheme_id == scheme_id, t.merchants.c.id == merchant_id
            )
        )
    ).first()
    if row is None:
        raise NotFound("merchant", merchant_id)
    return _merchant(row, await merchant_groups(conn, scheme_id, merchant_id))


async def list_merchants(
    conn: AsyncConnection, scheme_id: str, group_id: str, size: int, token: str
) -> Page[MerchantRecord]:
    mt = t.merchants
    key_cols = [mt.c.created_at_us, mt.c.id]
    query = select(mt).where(mt.c.scheme_id == scheme_id)
    if group_id:
        m = t.merchant_group_members
        query = query.where(
            mt.c.id.in_(
                select(m.c.merchant_id).where(m.c.scheme_id == scheme_id, m.c.group_id == group_id)
            )
        )
    after = decode_token("merchants", token, 2)
    if after is not None:
        query = query.where(after_key(key_cols, after))
    rows = list(await conn.execute(query.order_by(*key_cols).limit(size + 1)))
    page = rows[:size]
    groups = await _groups_of(conn, scheme_id, [r.id for r in page])
    items = [_merchant(r, groups[r.id]) for r in page]
    nxt = (
        encode_token("merchants", [page[-1].created_at_us, page[-1].id]) if len(rows) > size else ""
    )
    return Page(items, nxt)


async def known_groups(conn: AsyncConnection, scheme_id: str, wanted: Iterable[str]) -> set[str]:
    """Which of `wanted` are groups of the scheme."""
    wanted = list(wanted)
    if not wanted:
        return set()
    rows = await conn.execute(
        select(t.merchant_groups.c.id).where(
            t.merchant_groups.c.scheme_id == scheme_id, t.merchant_groups.c.id.in_(wanted)
        )
    )
    return {row.id for row in rows}


async def _check_groups(conn: AsyncConnection, scheme_id: str, group_ids: list[str]) -> None:
    known = await known_groups(conn, scheme_id, group_ids)
    for i, group_id in enumerate(group_ids):
        if group_id not in known:
            raise InvalidArgument.single(
                f"merchant.group_ids[{i}]", f"no merchant group {group_id!r} in the scheme"
            )


async def _set_groups(
    conn: AsyncConnection, scheme_id: str, merchant_id: str, group_ids: list[str]
) -> None:
    await _check_groups(conn, scheme_id, group_ids)
    m = t.merchant_group_members
    await conn.execute(delete(m).where(m.c.scheme_id == scheme_id, m.c.merchant_id == merchant_id))
    if group_ids:
        await conn.execute(
            m.insert(),
            [
                {"scheme_id": scheme_id, "group_id": g, "merchant_id": merchant_id}
                for g in group_ids
            ],
        )


async def create_merchant(
    conn: AsyncConnection,
    scheme_id: str,
    merchant_id: str,
    name: str,
    group_ids: list[str],
    now_us: int,
) -> MerchantRecord:
    if merchant_id == OPERATOR:
        raise InvalidArgument.single("merchant.merchant_id", f"{OPERATOR!r} is reserved")
    exists = AlreadyExists(
        f"merchant {merchant_id!r} exists already in scheme {scheme_id}",
        reason="MERCHANT_EXISTS",
        merchant_id=merchant_id,
    )
    try:
        async with conn.begin_nested():
            await conn.execute(
                t.merchants.insert().values(
                    scheme_id=scheme_id,
                    id=merchant_id,
                    name=name,
                    created_at_us=now_us,
                    updated_at_us=now_us,
                )
            )
    except IntegrityError:
        raise exists from None
    await _set_groups(conn, scheme_id, merchant_id, group_ids)
    return await get_merchant(conn, scheme_id, merchant_id)


async def update_merchant(
    conn: AsyncConnection,
    scheme_id: str,
    merchant_id: str,
    name: str | None,
    group_ids: list[str] | None,
    now_us: int,
) -> MerchantRecord:
    await get_merchant(conn, scheme_id, merchant_id)
    values: dict[str, object] = {"updated_at_us": now_us}
    if name is not None:
        values["name"] = name
    await conn.execute(
        update(t.merchants)
        .where(t.merchants.c.scheme_id == scheme_id, t.merchants.c.id == merchant_id)
        .values(**values)
    )
    if group_ids is not None:
        await _set_groups(conn, scheme_id, merchant_id, group_ids)
    return await get_merchant(conn, scheme_id, merchant_id)


async def create_group(
    conn: AsyncConnection, scheme_id: str, group_id: str, name: str, now_us: int
) -> GroupRecord:
    try:
        async with conn.begin_nested():
            await conn.execute(
                t.merchant_groups.insert().values(
                    scheme_id=scheme_id, id=group_id, name=name, created_at_us=now_us
                )
            )
    except IntegrityError:
        raise AlreadyExists(
            f"merchant group {group_id!r} exists already in scheme {scheme_id}",
            reason="MERCHANT_GROUP_EXISTS",
            group_id=group_id,
        ) from None
    return GroupRecord(scheme_id, group_id, name, now_us)


async def list_groups(
    conn: AsyncConnection, scheme_id: str, size: int, token: str
) -> Page[GroupRecord]:
    g = t.merchant_groups
    query = select(g).where(g.c.scheme_id == scheme_id)
    after = decode_token("merchant_groups", token, 1)
    if after is not None:
        query = query.where(g.c.id > after[0])
    rows = list(await conn.execute(query.order_by(g.c.id).limit(size + 1)))
    items = [GroupRecord(r.scheme_id, r.id, r.name, r.created_at_us) for r in rows[:size]]
    nxt = encode_token("merchant_groups", [items[-1].id]) if len(rows) > size else ""
    return Page(items, nxt)
