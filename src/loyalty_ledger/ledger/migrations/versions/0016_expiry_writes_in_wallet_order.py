"""an expiry run writes its per-lot rows in wallet order

An expiry run takes lots wallet by wallet (0015). Three per-lot structures were keyed by lot
id, which that order scatters over the whole index, so every chunk dirtied (and committed) a
page per lot in each:

- `lot_expirations` is keyed by (wallet_id, lot_id) instead of lot_id, and on SQLite is a
  WITHOUT ROWID table (the key is the row). A lot never changes wallet, so the key still
  admits one row per lot (rule 5).
- `allocations` is indexed by (wallet_id, lot_id) instead of lot_id.
- the expiry index of `lots` holds open lots only (`WHERE state = 'OPEN'`), so expiring a lot
  removes its entry instead of moving it to the EXPIRED part of the index.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-24 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_OPEN = sa.text("state = 'OPEN'")
_OLD_EXPIRY_INDEX = ["state", "expires_at_us", "wallet_id", "id"]
_NEW_EXPIRY_INDEX = ["expires_at_us", "wallet_id", "id"]
_COLUMNS = "lot_id, run_id, transaction_id, amount, expired_at_us"


def _lot_expirations(name: str, *, by_wallet: bool) -> None:
    key = [sa.Column("wallet_id", sa.String(64), nullable=False)] if by_wallet else []
    op.create_table(
        name,
        *key,
        sa.Column("lot_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("transaction_id", sa.String(64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expired_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["lots.id"], name=op.f("fk_lot_expirations_lot_id_lots")
        ),
        sa.PrimaryKeyConstraint(
            *(["wallet_id", "lot_id"] if by_wallet else ["lot_id"]),
            name=op.f("pk_lot_expirations"),
        ),
        sqlite_with_rowid=not by_wallet,
    )


def _rebuild_lot_expirations(*, by_wallet: bool) -> None:
    # A new table under a temporary name, the rows copied, the old one dropped, the new renamed
    # (constraint names are per table on SQLite; on PostgreSQL the old table's go with it first).
    op.rename_table("lot_expirations", "lot_expirations_old")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE lot_expirations_old DROP CONSTRAINT pk_lot_expirations")
        op.execute("ALTER TABLE lot_expirations_old DROP CONSTRAINT fk_lot_expirations_lot_id_lots")
    _lot_expirations("lot_expirations", by_wallet=by_wallet)
    if by_wallet:
        op.execute(
            f"INSERT INTO lot_expirations (wallet_id, {_COLUMNS}) "
            f"SELECT lots.wallet_id, e.{_COLUMNS.replace(', ', ', e.')} "
            "FROM lot_expirations_old e JOIN lots ON lots.id = e.lot_id"
        )
    else:
        op.execute(
            f"INSERT INTO lot_expirations ({_COLUMNS}) SELECT {_COLUMNS} FROM lot_expirations_old"
        )
    op.drop_table("lot_expirations_old")


def upgrade() -> None:
    _rebuild_lot_expirations(by_wallet=True)
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.create_index("ix_allocations_wallet_id_lot_id", ["wallet_id", "lot_id"])
        batch_op.drop_index("ix_allocations_lot_id")
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_lots_open_expires_at_us_wallet_id_id",
            _NEW_EXPIRY_INDEX,
            sqlite_where=_OPEN,
            postgresql_where=_OPEN,
        )
        batch_op.drop_index("ix_lots_" + "_".join(_OLD_EXPIRY_INDEX))


def downgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index("ix_lots_" + "_".join(_OLD_EXPIRY_INDEX), _OLD_EXPIRY_INDEX)
        batch_op.drop_index("ix_lots_open_expires_at_us_wallet_id_id")
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.create_index("ix_allocations_lot_id", ["lot_id"])
        batch_op.drop_index("ix_allocations_wallet_id_lot_id")
    _rebuild_lot_expirations(by_wallet=False)
