"""Idempotency records (rule 6 of DESIGN.md, AIP-155).

The record is claimed at the start of the write transaction and completed with the response
bytes in the same transaction, so an effect and its record commit or roll back together. On
PostgreSQL a concurrent claim of the same key waits on the primary key until the first
transaction ends; on SQLite the single writer serializes them. Failed requests leave no record:
a retry is evaluated afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain.errors import AlreadyExists
from loyalty_ledger.ledger import tables as t

# Built once (the claim and the completion run on every mutating RPC).
_CLAIMS = {
    "postgresql": pg_insert(t.idempotency_records).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(t.idempotency_records).on_conflict_do_nothing(),
}
_COMPLETE = (
    update(t.idempotency_records)
    .where(
        t.idempotency_records.c.scope == bindparam("b_scope"),
        t.idempotency_records.c.request_id == bindparam("b_request_id"),
    )
    .values(response=bindparam("b_response"))
)


def fingerprint(method: str, request_bytes: bytes) -> str:
    """A digest of what was asked: the method and the deterministic request encoding."""
    return hashlib.sha256(method.encode() + b"\x00" + request_bytes).hexdigest()


async def claim(
    conn: AsyncConnection,
    *,
    scope: str,
    request_id: str,
    method: str,
    digest: str,
    now_us: int,
    retention_us: int,
) -> bytes | None:
    """Claim the key for this request. Returns the stored response of a replay, else None."""
    rec = t.idempotency_records
    values = {
        "scope": scope,
        "request_id": request_id,
        "method": method,
        "fingerprint": digest,
        "response": None,
        "created_at_us": now_us,
        "expires_at_us": now_us + retention_us,
    }
    if await _insert_if_absent(conn, values):
        return None
    key = and_(rec.c.scope == scope, rec.c.request_id == request_id)
    existing = (
        await conn.execute(
            select(rec.c.fingerprint, rec.c.response, rec.c.expires_at_us).where(key)
        )
    ).one()
    if existing.expires_at_us <= now_us:  # past retention: the key is free again
        await conn.execute(delete(rec).where(key))
        await conn.execute(rec.insert().values(**values))
        return None
    if existing.fingerprint != digest:
        raise AlreadyExists(
            f"request_id {request_id!r} was already used for a different request",
            reason="IDEMPOTENCY_KEY_REUSED",
            request_id=request_id,
        )
    if existing.response is None:  # pragma: no cover - a claim commits with its response
        raise AssertionError("idempotency record committed without a response")
    return bytes(existing.response)


async def _insert_if_absent(conn: AsyncConnection, values: Mapping[str, object]) -> bool:
    """INSERT .. ON CONFLICT DO NOTHING. On PostgreSQL it waits for a concurrent claim."""
    statement = _CLAIMS["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    result = await conn.execute(statement, dict(values))
    return result.rowcount == 1


async def complete(conn: AsyncConnection, *, scope: str, request_id: str, response: bytes) -> None:
    await conn.execute(
        _COMPLETE, {"b_scope": scope, "b_request_id": request_id, "b_response": response}
    )


async def purge_expired(conn: AsyncConnection, now_us: int, batch_max: int = 10_000) -> int:
    """Delete up to `batch_max` records past their retention; returns how many went."""
    rec = t.idempotency_records
    keys = list(
        await conn.execute(
            select(rec.c.scope, rec.c.request_id)
            .where(rec.c.expires_at_us <= now_us)
            .limit(batch_max)
        )
    )
    for scope, request_id in keys:
        await conn.execute(
            delete(rec).where(and_(rec.c.scope == scope, rec.c.request_id == request_id))
        )
    return len(keys)
