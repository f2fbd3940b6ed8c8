"""API keys in the database: created with a random secret, stored as its SHA-256, revoked.

The secrets are 256 random bits, so a plain SHA-256 is enough to keep a stolen table from
giving them away (a slow password hash guards guessable secrets, which these are not). A key
set by configuration (LOYALTY_ADMIN_KEY) is stored the same way under a fixed id.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain.errors import NotFound
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.paging import after_key, decode_token, encode_token
from loyalty_ledger.ledger.records import Page

SECRET_PREFIX = "lk_"
CONFIGURED_ADMIN_KEY_ID = "key_configured_admin"


class Role(enum.StrEnum):
    ADMIN = "ADMIN"
    MERCHANT = "MERCHANT"
    SUBSCRIBER = "SUBSCRIBER"
    READER = "READER"


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    role: Role
    scheme_ids: tuple[str, ...]
    merchant_id: str
    created_at_us: int
    revoked_at_us: int | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKeyRecord:
        return cls(
            row.id,
            row.name,
            Role(row.role),
            tuple(json.loads(row.scheme_ids)),
            row.merchant_id,
            row.created_at_us,
            row.revoked_at_us,
        )


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_key(
    conn: AsyncConnection,
    name: str,
    role: Role,
    scheme_ids: list[str],
    merchant_id: str,
    now_us: int,
) -> tuple[ApiKeyRecord, str]:
    """A new key and its secret (which is not stored)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key")
    await conn.execute(
        t.api_keys.insert().values(
            id=key_id,
            name=name,
            role=role.value,
            scheme_ids=json.dumps(sorted(scheme_ids)),
            merchant_id=merchant_id,
            secret_hash=digest(secret),
            created_at_us=now_us,
        )
    )
    return await get_key(conn, key_id), secret


async def ensure_configured_admin(conn: AsyncConnection, secret: str, now_us: int) -> None:
    """Make `secret` (from configuration) a valid ADMIN key, replacing an earlier one."""
    k = t.api_keys
    values = {"secret_hash": digest(secret), "revoked_at_us": None}
    replace = update(k).where(k.c.id == CONFIGURED_ADMIN_KEY_ID).values(**values)
    if (await conn.execute(replace)).rowcount:
        return
    try:
        async with conn.begin_nested():
            await conn.execute(
                k.insert().values(
                    id=CONFIGURED_ADMIN_KEY_ID,
                    name="LOYALTY_ADMIN_KEY",
                    role=Role.ADMIN.value,
                    created_at_us=now_us,
                    **values,
                )
            )
    except IntegrityError:
        # Another replica starting at the same moment inserted it first (PostgreSQL lets
        # both miss it in the UPDATE): make its row carry this secret instead.
        await conn.execute(replace)


async def count_valid(conn: AsyncConnection) -> int:
    rows = await conn.execute(select(t.api_keys.c.id).where(t.api_keys.c.revoked_at_us.is_(None)))
    return len(list(rows))


async def find_by_secret(conn: AsyncConnection, secret: str) -> ApiKeyRecord | None:
    row = (
        await conn.execute(select(t.api_keys).where(t.api_keys.c.secret_hash == digest(secret)))
    ).first()
    return ApiKeyRecord.from_row(row) if row is not None else None


async def get_key(conn: AsyncConnection, key_id: str) -> ApiKeyRecord:
    row = (await conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id))).first()
    if row is None:
        raise NotFound("api key", key_id)
    return ApiKeyRecord.from_row(row)


async def list_keys(conn: AsyncConnection, size: int, token: str) -> Page[ApiKeyRecord]:
    k = t.api_keys
    key_cols = [k.c.created_at_us, k.c.id]
    query = select(k)
    after = decode_token("api_keys", token, 2)
    if after is not None:
        query = query.where(after_key(key_cols, after))
    rows = list(await conn.execute(query.order_by(*key_cols).limit(size + 1)))
    items = [ApiKeyRecord.from_row(r) for r in rows[:size]]
    nxt = ""
    if len(rows) > size:
        nxt = encode_token("api_keys", [items[-1].created_at_us, items[-1].id])
    return Page(items, nxt)


async def revoke(conn: AsyncConnection, key_id: str, now_us: int) -> ApiKeyRecord:
    key = await get_key(conn, key_id)
    if key.revoked_at_us is None:
        await conn.execute(
            update(t.api_keys).where(t.api_keys.c.id == key_id).values(revoked_at_us=now_us)
        )
    return await get_key(conn, key_id)
