"""The outbox: append-only events written in the same database transaction as their cause."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.ids import new_id


def event_row(
    *,
    event_type: str,
    scheme_id: str,
    now_us: int,
    wallet_id: str | None = None,
    transaction_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One outbox row; its `seq` (assigned by the database) orders the stream."""
    return {
        "event_id": new_id("evt"),
        "type": event_type,
        "scheme_id": scheme_id,
        "wallet_id": wallet_id,
        "transaction_id": transaction_id,
        "payload": json.dumps(payload or {}, sort_keys=True, separators=(",", ":")),
        "created_at_us": now_us,
    }


async def append_event(conn: AsyncConnection, **fields: Any) -> None:
    """Append one event (see `event_row` for the fields)."""
    await conn.execute(t.outbox_events.insert().values(**event_row(**fields)))


# Events of the expiration stream (WatchExpirations). Their payload carries everything a
# notification service needs, so the stream never has to join other tables.
EXPIRING_SOON = "EXPIRING_SOON"
EXPIRED = "EXPIRED"
HOLD_EXPIRED = "HOLD_EXPIRED"
EXPIRATION_EVENT_TYPES = (EXPIRING_SOON, EXPIRED, HOLD_EXPIRED)


def expiration_row(
    event_type: str,
    *,
    scheme_id: str,
    wallet_id: str,
    customer_ref: str,
    asset: str,
    amount: int,
    expires_at_us: int | None,
    now_us: int,
    transaction_id: str | None = None,
    lot_id: str | None = None,
    hold_id: str | None = None,
    sponsor_id: str | None = None,
    lead_seconds: int = 0,
) -> dict[str, Any]:
    """One outbox row of the expiration stream, for `append_rows`."""
    assert event_type in EXPIRATION_EVENT_TYPES, event_type
    payload: dict[str, Any] = {
        "customer_ref": customer_ref,
        "lot_id": lot_id,
        "hold_id": hold_id,
        "asset": asset,
        "amount": amount,
        "expires_at_us": expires_at_us,
        "sponsor_id": sponsor_id,
        "lead_seconds": lead_seconds,
    }
    return event_row(
        event_type=event_type,
        scheme_id=scheme_id,
        wallet_id=wallet_id,
        transaction_id=transaction_id,
        now_us=now_us,
        payload=payload,
    )


async def append_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Append many events in one statement (runs write thousands per chunk)."""
    if rows:
        await conn.execute(t.outbox_events.insert(), rows)
