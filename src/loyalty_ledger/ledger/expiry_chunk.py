"""Set-based expiry of whole lots: one chunk of an expiry or inactivity run, in a few statements.

A run expires millions of lots, so nothing here loops over lots in Python. The chunk's lots
are copied once into a per-connection scratch table (`expiry_chunk`), numbered by the
database, and every row the ledger needs is written from it with INSERT ... SELECT:

- one EXPIRE entry per wallet (id `<chunk txn prefix>.<wallet number>`), with a wallet leg
  per asset and one leg per expiry account (rule 7: a promotional lot's value goes back to
  `sponsor:<scheme>:<sponsor>`, cash value to `breakage:<scheme>`, as `expiry_account` in
  engine.py says for the one-lot path);
- one allocation and one EXPIRED outbox event per lot that still had value;
- one `lot_expirations` row per lot, whose primary key refuses a second expiry (rule 5);
- the lots themselves: the whole remainder moves to `expired`, the state to EXPIRED.

Value still held by an active hold is not touched (it stays held; see docs/expiry.md).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    TextClause,
    bindparam,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select, Subquery

from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.ids import new_id

# A scratch table of the connection, never part of the schema (so never migrated).
_scratch = MetaData()
expiry_chunk = Table(
    "expiry_chunk",
    _scratch,
    Column("n", Integer, nullable=False),  # the lot's number in the chunk: 1, 2, ...
    Column("wallet_n", Integer, nullable=False),  # the wallet's number in the chunk
    Column("lot_id", String(64), nullable=False),
    Column("wallet_id", String(64), nullable=False),
    Column("scheme_id", String(64), nullable=False),
    Column("customer_ref", String(128), nullable=False),
    Column("asset", String(12), nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("funding", String(16), nullable=False),
    Column("sponsor_id", String(64), nullable=True),
    Column("expires_at_us", BigInteger, nullable=True),
    prefixes=["TEMPORARY"],
)

_TXN_ID = "(:txn_prefix || '.' || CAST(wallet_n AS TEXT))"

_STATEMENTS = (
    # One EXPIRE entry per wallet that loses value.
    f"""
    INSERT INTO transactions (id, type, scheme_id, wallet_id, reference, metadata, created_at_us)
    SELECT {_TXN_ID}, 'EXPIRE', MIN(scheme_id), wallet_id, '', '{{}}', :now_us
    FROM expiry_chunk WHERE remaining > 0
    GROUP BY wallet_n, wallet_id ORDER BY wallet_n
    """,
    # Its postings: the wallet leg per asset first, then the expiry accounts (sum zero).
    f"""
    INSERT INTO postings (transaction_id, account, asset, amount)
    SELECT {_TXN_ID}, account, asset, amount FROM (
        SELECT wallet_n, 0 AS leg, 'wallet:' || wallet_id AS account, asset,
               -SUM(remaining) AS amount
        FROM expiry_chunk WHERE remaining > 0
        GROUP BY wallet_n, wallet_id, asset
        UNION ALL
        SELECT wallet_n, 1 AS leg, account, asset, SUM(remaining) AS amount
        FROM (
            SELECT wallet_n, asset, remaining,
                   CASE WHEN funding = 'PROMOTIONAL'
                        THEN 'sponsor:' || scheme_id || ':' || sponsor_id
                        ELSE 'breakage:' || scheme_id END AS account
            FROM expiry_chunk WHERE remaining > 0
        ) by_account
        GROUP BY wallet_n, account, asset
    ) legs
    ORDER BY wallet_n, leg, account, asset
    """,
    f"""
    INSERT INTO allocations (transaction_id, lot_id, wallet_id, asset, amount)
    SELECT {_TXN_ID}, lot_id, wallet_id, asset, remaining
    FROM expiry_chunk WHERE remaining > 0 ORDER BY n
    """,
    # One EXPIRED event per lot; the payload has the keys of outbox.expiration_row.
    f"""
    INSERT INTO outbox_events
        (event_id, type, scheme_id, wallet_id, transaction_id, payload, created_at_us)
    SELECT :event_prefix || '.' || CAST(n AS TEXT), 'EXPIRED', scheme_id, wallet_id, {_TXN_ID},
           CAST({{json_object}}(
               'amount', remaining, 'asset', asset, 'customer_ref', customer_ref,
               'expires_at_us', expires_at_us, 'hold_id', NULL, 'lead_seconds', 0,
               'lot_id', lot_id, 'sponsor_id', sponsor_id) AS TEXT),
           :now_us
    FROM expiry_chunk WHERE remaining > 0 ORDER BY n
    """,
    # Rule 5 in the schema: the primary key makes a second expiry of any lot fail.
    f"""
    INSERT INTO lot_expirations (lot_id, run_id, transaction_id, amount, expired_at_us)
    SELECT lot_id, :run_id, CASE WHEN remaining > 0 THEN {_TXN_ID} END, remaining, :now_us
    FROM expiry_chunk ORDER BY n
    """,
    """
    UPDATE lots SET expired = expired + remaining, remaining = 0, state = 'EXPIRED'
    WHERE id IN (SELECT lot_id FROM expiry_chunk)
    """,
)

_JSON_OBJECT = {"sqlite": "json_object", "postgresql": "json_build_object"}
_PARAM_TYPES = {
    "txn_prefix": String,
    "event_prefix": String,
    "run_id": String,
    "now_us": BigInteger,
}


@cache
def _statements(dialect: str) -> tuple[TextClause, ...]:
    """The chunk's statements for one dialect, with typed parameters (asyncpg must know what
    `$1 || '.'` concatenates). Built once."""
    return tuple(
        text(sql.replace("{json_object}", _JSON_OBJECT[dialect])).bindparams(
            *(
                bindparam(name, type_=kind)
                for name, kind in _PARAM_TYPES.items()
                if f":{name}" in sql
            )
        )
        for sql in _STATEMENTS
    )


async def expire_whole_lots(
    conn: AsyncConnection, picked: Select[Any], *, run_id: str | None, now_us: int
) -> int:
    """Expire the whole remainder of every lot that `picked` selects. Returns how many lots.

    `picked` selects rows of `lots` (all columns): it is the chunk, bounded by its LIMIT and,
    on PostgreSQL, locked with FOR UPDATE SKIP LOCKED so overlapping runs take disjoint lots.
    The caller guarantees the lots are OPEN.
    """
    await conn.run_sync(lambda sync: expiry_chunk.create(sync, checkfirst=True))
    await conn.execute(expiry_chunk.delete())
    await conn.execute(
        expiry_chunk.insert().from_select(
            [c.name for c in expiry_chunk.columns], _numbered(picked.subquery("picked"))
        )
    )
    count: int = (await conn.execute(select(func.count()).select_from(expiry_chunk))).scalar_one()
    if count:
        params = {
            "txn_prefix": new_id("txn"),
            "event_prefix": new_id("evt"),
            "run_id": run_id,
            "now_us": now_us,
        }
        for statement in _statements(conn.dialect.name):
            await conn.execute(statement, params)
        await conn.execute(expiry_chunk.delete())
    return count


def _numbered(lots: Subquery) -> Select[Any]:
    """The chunk's lots with their wallet's customer reference, numbered per lot and wallet."""
    c = lots.c
    return (
        select(
            func.row_number().over(order_by=(c.expires_at_us, c.wallet_id, c.id)),
            func.dense_rank().over(order_by=c.wallet_id),
            c.id,
            c.wallet_id,
            c.scheme_id,
            t.wallets.c.customer_ref,
            c.asset,
            c.remaining,
            c.funding,
            c.sponsor_id,
            c.expires_at_us,
        )
        .select_from(lots)
        .join(t.wallets, t.wallets.c.id == c.wallet_id)
    )
