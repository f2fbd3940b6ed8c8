"""Alembic migrations go down and up again on both backends, and leave the schema of tables.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Inspector
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from loyalty_ledger.ledger import migrate
from loyalty_ledger.ledger import tables as t


async def _inspected(url: str, look: Callable[[Inspector], Any]) -> Any:
    """What `look` finds with SQLAlchemy's inspector on the database at `url`."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: look(inspect(sync)))
    finally:
        await engine.dispose()


async def _indexes(url: str, table: str) -> dict[str, list[str]]:
    found = await _inspected(url, lambda inspector: inspector.get_indexes(table))
    # (PostgreSQL also lists the index behind each unique constraint; those are constraints,
    # compared with tables.py by the test below.)
    return {
        ix["name"]: list(ix["column_names"]) for ix in found if "duplicates_constraint" not in ix
    }


def _declared(table: t.Table) -> dict[str, list[str]]:
    return {str(ix.name): [c.name for c in ix.columns] for ix in table.indexes}


async def test_down_to_0003_and_up_again_keeps_the_declared_indexes(database_url: str) -> None:
    head = migrate.head_revision()
    await asyncio.to_thread(migrate.downgrade, database_url, "0003")
    lots = await _indexes(database_url, "lots")
    assert lots["ix_lots_state_expires_at_us"] == ["state", "expires_at_us"]
    assert "ix_lots_state_expires_at_us_id" not in lots
    await migrate.upgrade_async(database_url, head)
    for table in (t.lots, t.transactions):
        assert await _indexes(database_url, table.name) == _declared(table)


async def test_the_migrated_schema_is_the_schema_of_tables_py(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), t.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_0016_moves_each_expiry_onto_its_lot_and_its_run_onto_the_entry(
    database_url: str,
) -> None:
    """An expiry recorded before 0016 (a lot_expirations row) becomes the lot's expiry
    instant and the run id in its EXPIRE entry's metadata; the trigger then refuses a second
    expiry; going down again rebuilds the row."""
    await asyncio.to_thread(migrate.downgrade, database_url, "0015")
    engine = create_async_engine(database_url)
    rows = {
        "schemes": "INSERT INTO schemes (id, name, timezone, default_expiry_policy,"
        " refund_expired_handling, refund_grace_seconds, cash_expiry_allowed, created_at_us,"
        " updated_at_us) VALUES ('s', 'S', 'UTC', '{\"kind\": \"NEVER\"}', 'EXPIRE', 0,"
        " false, 1, 1)",
        "wallets": "INSERT INTO wallets (id, scheme_id, customer_ref, status, status_reason,"
        " metadata, created_at_us, updated_at_us) VALUES ('w', 's', 'c', 'ACTIVE', '', '{}',"
        " 1, 1)",
        "transactions": "INSERT INTO transactions (id, type, scheme_id, wallet_id, reference,"
        " metadata, created_at_us) VALUES ('x', 'EXPIRE', 's', 'w', '', '{}', 5)",
        "lots": "INSERT INTO lots (id, wallet_id, scheme_id, asset, amount, remaining,"
        " expired, state, funding, sponsor_id, available_at_us, expires_at_us, merchant_ids,"
        " product_ids, source_transaction_id, created_at_us) VALUES ('l', 'w', 's', 'P', 7,"
        " 0, 7, 'EXPIRED', 'PROMOTIONAL', 'm', 1, 4, '[]', '[]', 'x', 1)",
        "allocations": "INSERT INTO allocations (transaction_id, lot_id, wallet_id, asset,"
        " amount) VALUES ('x', 'l', 'w', 'P', 7)",
        "lot_expirations": "INSERT INTO lot_expirations (lot_id, run_id, transaction_id,"
        " amount, expired_at_us) VALUES ('l', 'run_1', 'x', 7, 5)",
    }
    try:
        async with engine.begin() as conn:
            for statement in rows.values():
                await conn.execute(text(statement))
        await migrate.upgrade_async(database_url, migrate.head_revision())
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT expired_at_us FROM lots")) == 5
            assert await conn.scalar(text("SELECT metadata FROM transactions")) == (
                '{"run_id": "run_1"}'
            )
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE lots SET expired_at_us = 6"))
        await asyncio.to_thread(migrate.downgrade, database_url, "0015")
        async with engine.connect() as conn:
            got = (await conn.execute(text("SELECT * FROM lot_expirations"))).one()
        assert (got.lot_id, got.transaction_id, got.amount, got.expired_at_us) == ("l", "x", 7, 5)
    finally:
        await engine.dispose()


async def _primary_key(url: str, table: str) -> list[str]:
    found = await _inspected(url, lambda inspector: inspector.get_pk_constraint(table))
    return list(found["constrained_columns"])


async def test_0017_keys_lots_by_wallet_and_keeps_every_lot_and_reference(
    database_url: str,
) -> None:
    """0017 rekeys lots by (wallet_id, id) (on SQLite: stores them in that order, WITHOUT
    ROWID) and keeps every row, the foreign keys to a lot's id, the rule 5 trigger and the
    uniqueness of a lot id; going down restores the key by id."""
    sqlite = database_url.startswith("sqlite")
    await asyncio.to_thread(migrate.downgrade, database_url, "0016")
    engine = create_async_engine(database_url)
    if sqlite:

        @event.listens_for(engine.sync_engine, "connect")
        def _foreign_keys_on(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

    def lot(lot_id: str, wallet_id: str, state: str, expired_at_us: str) -> str:
        expired = "7" if state == "EXPIRED" else "0"
        remaining = "0" if state == "EXPIRED" else "7"
        return (
            "INSERT INTO lots (id, wallet_id, scheme_id, asset, amount, remaining, expired,"
            " state, funding, sponsor_id, available_at_us, expires_at_us, merchant_ids,"
            " product_ids, source_transaction_id, created_at_us, expired_at_us) VALUES"
            f" ('{lot_id}', '{wallet_id}', 's', 'P', 7, {remaining}, {expired}, '{state}',"
            f" 'PROMOTIONAL', 'm', 1, 4, '[]', '[]', 'x', 1, {expired_at_us})"
        )

    wallet = (
        "INSERT INTO wallets (id, scheme_id, customer_ref, status, status_reason, metadata,"
        " created_at_us, updated_at_us) VALUES ('{0}', 's', '{0}', 'ACTIVE', '', '{{}}', 1, 1)"
    )
    setup = [
        "INSERT INTO schemes (id, name, timezone, default_expiry_policy,"
        " refund_expired_handling, refund_grace_seconds, cash_expiry_allowed, created_at_us,"
        " updated_at_us) VALUES ('s', 'S', 'UTC', '{\"kind\": \"NEVER\"}', 'EXPIRE', 0,"
        " false, 1, 1)",
        wallet.format("w1"),
        wallet.format("w2"),
        "INSERT INTO transactions (id, type, scheme_id, wallet_id, reference, metadata,"
        " created_at_us) VALUES ('x', 'EXPIRE', 's', 'w2', '', '{}', 5)",
        # Credited in turn to w2, w1, w2: stored by wallet, w1's lot comes first.
        lot("l1", "w2", "EXPIRED", "5"),
        lot("l2", "w1", "OPEN", "NULL"),
        lot("l3", "w2", "OPEN", "NULL"),
        "INSERT INTO allocations (transaction_id, lot_id, wallet_id, asset, amount)"
        " VALUES ('x', 'l1', 'w2', 'P', 7)",
    ]
    if sqlite:  # what an earlier attempt, killed after its first statement, leaves behind
        setup.append("CREATE TABLE lots_rebuilt (id VARCHAR(64))")
    every_lot = text("SELECT * FROM lots ORDER BY id")
    try:
        async with engine.begin() as conn:
            for statement in setup:
                await conn.execute(text(statement))
            before = (await conn.execute(every_lot)).all()
        await migrate.upgrade_async(database_url, migrate.head_revision())
        assert await _primary_key(database_url, "lots") == ["wallet_id", "id"]
        async with engine.connect() as conn:
            assert (await conn.execute(every_lot)).all() == before
            assert (await conn.execute(text("SELECT lot_id FROM allocations"))).all() == [("l1",)]
            if sqlite:  # the table itself is in (wallet_id, id) order, with no rowid
                stored = (await conn.execute(text("SELECT id, product_ids FROM lots"))).all()
                assert [row[0] for row in stored] == ["l2", "l1", "l3"]
                with pytest.raises(OperationalError, match="rowid"):
                    await conn.execute(text("SELECT rowid FROM lots"))
        refused = [
            lot("l1", "w1", "OPEN", "NULL"),  # a lot id is unique across wallets
            "INSERT INTO allocations (transaction_id, lot_id, wallet_id, asset, amount)"
            " VALUES ('x', 'nope', 'w2', 'P', 7)",  # the foreign key to lots.id holds
            "UPDATE lots SET expired_at_us = 6 WHERE id = 'l1'",  # rule 5's trigger is back
        ]
        for statement in refused:
            with pytest.raises(IntegrityError):
                async with engine.begin() as conn:
                    await conn.execute(text(statement))
        await asyncio.to_thread(migrate.downgrade, database_url, "0016")
        assert await _primary_key(database_url, "lots") == ["id"]
        async with engine.connect() as conn:
            assert (await conn.execute(every_lot)).all() == before
            if sqlite:
                assert len((await conn.execute(text("SELECT rowid FROM lots"))).all()) == 3
    finally:
        await engine.dispose()
