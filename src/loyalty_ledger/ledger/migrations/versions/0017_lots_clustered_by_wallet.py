"""lots are keyed (and on SQLite stored) wallet by wallet

The primary key of `lots` becomes (wallet_id, id), and `id` alone keeps a unique constraint
(`uq_lots_id`), which the foreign keys of allocations, hold allocations and expiry warnings
now reference. On SQLite the table is rebuilt WITHOUT ROWID, so its rows are stored in
primary-key order: a wallet's lots share pages. An expiry run takes due lots wallet by wallet
(0015), and each chunk used to rewrite a page per lot scattered over the whole table (and the
same pages again in the next few chunks); now it rewrites a few pages per wallet, once.

On PostgreSQL rows stay in a heap; only the keys change.

The SQLite rebuild copies every lot (it takes about a minute per 5,000,000 lots); the
foreign keys are checked afterwards, and a violation aborts the migration.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-24 04:00:00
"""

from __future__ import annotations

import re

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# Tables whose `lot_id` references lots.id: (table, foreign key name).
_CHILDREN = (
    ("allocations", "fk_allocations_lot_id_lots"),
    ("hold_allocations", "fk_hold_allocations_lot_id_lots"),
    ("expiry_warnings", "fk_expiry_warnings_lot_id_lots"),
)

_OLD_KEY = "CONSTRAINT pk_lots PRIMARY KEY (id)"
_NEW_KEY = "CONSTRAINT pk_lots PRIMARY KEY (wallet_id, id), CONSTRAINT uq_lots_id UNIQUE (id)"

# Dropping the old table drops its indexes and trigger; they are made again on the new one.
_SQLITE_INDEXES = (
    "CREATE INDEX ix_lots_wallet_id_asset_state ON lots (wallet_id, asset, state)",
    "CREATE INDEX ix_lots_open_expires_at_us_wallet_id_id"
    " ON lots (expires_at_us, wallet_id, id) WHERE state = 'OPEN'",
    """
    CREATE TRIGGER lots_expire_once BEFORE UPDATE OF expired_at_us ON lots
    WHEN OLD.expired_at_us IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'rule 5: the lot has expired already'); END
    """,
)


def _rebuild_sqlite_lots(old_key: str, new_key: str, *, with_rowid: bool) -> None:
    """SQLite cannot change a primary key in place: make the table again under the new key,
    copy the rows in that key's order, and swap it in (Alembic runs migrations with foreign
    keys off, so dropping the old table leaves the children's rows alone; they are checked
    at the end)."""
    bind = op.get_bind()
    ddl: str = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'lots'"
    ).scalar_one()
    if old_key not in ddl:
        raise RuntimeError(f"lots is not as this migration expects: {ddl}")
    # (After a rename SQLite keeps the name quoted: `CREATE TABLE "lots"`.)
    ddl = re.sub(r'^CREATE TABLE\s+"?lots"?', "CREATE TABLE lots_rebuilt", ddl)
    # CREATE TABLE commits by itself (pysqlite opens the transaction at the INSERT), so an
    # attempt killed before the end may have left an empty `lots_rebuilt` behind; the rest
    # is one transaction with the revision's own update.
    op.execute("DROP TABLE IF EXISTS lots_rebuilt")
    ddl = ddl.replace(old_key, new_key).rstrip()
    ddl = ddl.removesuffix(" WITHOUT ROWID") if with_rowid else ddl + " WITHOUT ROWID"
    op.execute(ddl)
    op.execute("INSERT INTO lots_rebuilt SELECT * FROM lots ORDER BY wallet_id, id")
    op.execute("DROP TABLE lots")
    op.execute("ALTER TABLE lots_rebuilt RENAME TO lots")
    for statement in _SQLITE_INDEXES:
        op.execute(statement)
    violations = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        raise RuntimeError(f"foreign keys broken by the rebuild of lots: {violations[:10]}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_lots(_OLD_KEY, _NEW_KEY, with_rowid=False)
        return
    op.create_unique_constraint("uq_lots_id", "lots", ["id"])
    for table, name in _CHILDREN:
        op.drop_constraint(name, table, type_="foreignkey")
    op.drop_constraint("pk_lots", "lots", type_="primary")
    op.create_primary_key("pk_lots", "lots", ["wallet_id", "id"])
    for table, name in _CHILDREN:
        op.create_foreign_key(name, table, "lots", ["lot_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_lots(_NEW_KEY, _OLD_KEY, with_rowid=True)
        return
    for table, name in _CHILDREN:
        op.drop_constraint(name, table, type_="foreignkey")
    op.drop_constraint("pk_lots", "lots", type_="primary")
    op.create_primary_key("pk_lots", "lots", ["id"])
    op.drop_constraint("uq_lots_id", "lots", type_="unique")
    for table, name in _CHILDREN:
        op.create_foreign_key(name, table, "lots", ["lot_id"], ["id"])
