"""Alembic migrations go down and up again on both backends, and leave the schema of tables.py."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from loyalty_ledger.ledger import migrate
from loyalty_ledger.ledger import tables as t


async def _indexes(url: str, table: str) -> dict[str, list[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda sync: inspect(sync).get_indexes(table))
    finally:
        await engine.dispose()
    return {ix["name"]: list(ix["column_names"]) for ix in found}


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
