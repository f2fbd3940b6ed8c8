"""Set-based expiry of whole lots: one chunk of an expiry or inactivity run, in a few statements.

A run expires millions of lots, so nothing here loops over lots in Python. The chunk's lots
are copied once into a per-connection scratch table (`expiry_chunk`), numbered by the
database, and every row the ledger needs is written from it with INSERT ... SELECT:

- one EXPIRE entry per wallet (id `<chunk txn prefix>.<wallet number>`), with a wallet leg
  per asset and one leg per expiry account (rule 7: a promotional lot's value goes back to
  `sponsor:<scheme>:<sponsor>`, cash value to `breakage:<scheme>`, as `expiry_account` in
  engine.py says for the one-lot path);
- one allocation and one EXPIRED outbox event per lot that still had value;
- the lots themselves: the remainder copied into the chunk moves to `expired`, the state to
  EXPIRED, and `expired_at_us` is set, which the schema allows once per lot (rule 5).

Per lot, that is the lot's own row, one allocation and one event (migration 0016 dropped a
separate `lot_expirations` row), and the expiry index holds open lots only, so an expired
lot leaves it rather than moving within it. Lots are stored wallet by wallet (migration
0017), so the chunk's lots, taken wallet by wallet, share their pages.

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
from sqlalchemy.sql import Select

from loyalty_ledger.ledger.ids import new_id

# Scratch tables of the connection, never part of the schema (so never migrated). Their
# numbers come from their autoincrementing keys in insertion order (the rowid on SQLite, a
# sequence on PostgreSQL), not from window functions, which cost more than the rest of the
# copy together. They only need to be unique within the chunk (ids carry a fresh prefix).
# PostgreSQL empties them at every commit (it never vacuums temporary tables by itself), but
# its sequences keep counting for as long as the connection lives: the numbers are BIGINT.
_scratch = MetaData()
_Number = BigInteger().with_variant(Integer(), "sqlite")
expiry_chunk = Table(
    "expiry_chunk",
    _scratch,
    Column("n", _Number, primary_key=True),  # lot
    Column("wallet_n", _Number, nullable=True),  # the wallet's number, from chunk_wallets
    Column("lot_id", String(64), nullable=False),
    Column("wallet_id", String(64), nullable=False),
    Column("scheme_id", String(64), nullable=False),
    Column("customer_ref", String(128), nullable=True),  # from chunk_wallets
    Column("asset", String(12), nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("funding", String(16), nullable=False),
    Column("sponsor_id", String(64), nullable=True),
    Column("expires_at_us", BigInteger, nullable=True),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)
chunk_wallets = Table(
    "chunk_wallets",
    _scratch,
    Column("wallet_n", _Number, primary_key=True),
    Column("wallet_id", String(64), nullable=False, unique=True),
    Column("customer_ref", String(128), nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)

# What the chunk moves per wallet, expiry account and asset: aggregated from the lots once,
# for the EXPIRE entries and both sides of their postings.
chunk_legs = Table(
    "chunk_legs",
    _scratch,
    Column("wallet_n", _Number, nullable=False),
    Column("wallet_id", String(64), nullable=False),
    Column("scheme_id", String(64), nullable=False),
    Column("account", String(200), nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", BigInteger, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)
_SCRATCH_TABLES = (expiry_chunk, chunk_wallets, chunk_legs)

_LOT_COLUMNS = (
    "lot_id",
    "wallet_id",
    "scheme_id",
    "asset",
    "remaining",
    "funding",
    "sponsor_id",
    "expires_at_us",
)

# The run that expired the entry's lots, as json.dumps(sort_keys=True) writes it (run ids are
# letters, digits and underscores).
_RUN_METADATA = """CASE WHEN :run_id IS NULL THEN '{}'
                       ELSE '{"run_id": "' || :run_id || '"}' END"""
_TXN_ID = "(:txn_prefix || '.' || CAST(wallet_n AS TEXT))"

_STATEMENTS = (
    # The chunk's wallets, numbered, with their customer references (read once per wallet).
    """
    INSERT INTO chunk_wallets (wallet_id, customer_ref)
    SELECT id, customer_ref FROM wallets
    WHERE id IN (SELECT wallet_id FROM expiry_chunk) ORDER BY id
    """,
    """
    UPDATE expiry_chunk SET wallet_n = w.wallet_n, customer_ref = w.customer_ref
    FROM chunk_wallets AS w WHERE w.wallet_id = expiry_chunk.wallet_id
    """,
    # The value each wallet loses, per expiry account and asset (rule 7: a promotional lot's
    # value goes back to its sponsor, cash value to breakage).
    """
    INSERT INTO chunk_legs (wallet_n, wallet_id, scheme_id, account, asset, amount)
    SELECT wallet_n, wallet_id, scheme_id, account, asset, SUM(remaining) FROM (
        SELECT wallet_n, wallet_id, scheme_id, asset, remaining,
               CASE WHEN funding = 'PROMOTIONAL'
                    THEN 'sponsor:' || scheme_id || ':' || sponsor_id
                    ELSE 'breakage:' || scheme_id END AS account
        FROM expiry_chunk WHERE remaining > 0
    ) by_account
    GROUP BY wallet_n, wallet_id, scheme_id, account, asset
    """,
    # One EXPIRE entry per wallet that loses value.
    f"""
    INSERT INTO transactions (id, type, scheme_id, wallet_id, reference, metadata, created_at_us)
    SELECT {_TXN_ID}, 'EXPIRE', MIN(scheme_id), wallet_id, '', {_RUN_METADATA}, :now_us
    FROM chunk_legs GROUP BY wallet_n, wallet_id ORDER BY wallet_n
    """,
    # Its postings: the wallet leg per asset first, then the expiry accounts (sum zero).
    f"""
    INSERT INTO postings (transaction_id, account, asset, amount)
    SELECT {_TXN_ID}, account, asset, amount FROM (
        SELECT wallet_n, 0 AS leg, 'wallet:' || wallet_id AS account, asset,
               -SUM(amount) AS amount
        FROM chunk_legs GROUP BY wallet_n, wallet_id, asset
        UNION ALL
        SELECT wallet_n, 1 AS leg, account, asset, amount FROM chunk_legs
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
    # The lots give up exactly the amounts posted above (not whatever they hold by now): had
    # any of it gone meanwhile, `remaining` would go negative and its CHECK refuse the chunk.
    # Rule 5 in the schema: the trigger `lots_expire_once` refuses a lot that has an
    # `expired_at_us` already, so a second expiry of any lot fails the whole chunk. The lots
    # are found by their primary key (wallet, lot), so in the order they are stored.
    """
    UPDATE lots SET expired = lots.expired + e.remaining,
                    remaining = lots.remaining - e.remaining,
                    state = 'EXPIRED',
                    expired_at_us = :now_us
    FROM expiry_chunk AS e WHERE lots.wallet_id = e.wallet_id AND lots.id = e.lot_id
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
    await conn.run_sync(lambda sync: _scratch.create_all(sync, checkfirst=True))
    for scratch in _SCRATCH_TABLES:
        await conn.execute(scratch.delete())
    lots = picked.subquery("picked")
    await conn.execute(
        expiry_chunk.insert().from_select(
            _LOT_COLUMNS,
            select(lots.c.id, *(lots.c[name] for name in _LOT_COLUMNS[1:])).order_by(
                lots.c.expires_at_us, lots.c.wallet_id, lots.c.id
            ),
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
        for scratch in _SCRATCH_TABLES:
            await conn.execute(scratch.delete())
    return count
