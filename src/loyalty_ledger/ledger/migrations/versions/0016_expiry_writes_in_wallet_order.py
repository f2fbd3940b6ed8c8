"""an expiry run writes fewer, better ordered rows per lot

An expiry run takes lots wallet by wallet (0015), or in lot order when every lot has its own
instant. Per expired lot it wrote rows into B-trees keyed in neither order, so each chunk
dirtied (and committed) a page per lot in each:

- `lot_expirations` (keyed by lot id) is gone. Rule 5 now lives on the lot: `expired_at_us`
  is set when an expiry closes the lot, and the trigger `lots_expire_once` refuses to write
  it a second time. The run that expired a lot is in its EXPIRE entry's metadata.
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

# Rule 5 in the schema: a lot's expiry instant is written once.
_TRIGGER = {
    "sqlite": [
        """
        CREATE TRIGGER lots_expire_once BEFORE UPDATE OF expired_at_us ON lots
        WHEN OLD.expired_at_us IS NOT NULL
        BEGIN SELECT RAISE(ABORT, 'rule 5: the lot has expired already'); END
        """
    ],
    "postgresql": [
        """
        CREATE FUNCTION lots_expire_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.expired_at_us IS NOT NULL THEN
                RAISE EXCEPTION 'rule 5: lot % has expired already', OLD.id
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            RETURN NEW;
        END $$
        """,
        """
        CREATE TRIGGER lots_expire_once BEFORE UPDATE OF expired_at_us ON lots
        FOR EACH ROW EXECUTE FUNCTION lots_expire_once()
        """,
    ],
}
_DROP_TRIGGER = {
    "sqlite": ["DROP TRIGGER lots_expire_once"],
    "postgresql": ["DROP TRIGGER lots_expire_once ON lots", "DROP FUNCTION lots_expire_once()"],
}


def _run(statements: dict[str, list[str]]) -> None:
    for statement in statements[op.get_bind().dialect.name]:
        op.execute(statement)


def upgrade() -> None:
    op.add_column("lots", sa.Column("expired_at_us", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE lots SET expired_at_us = (SELECT e.expired_at_us FROM lot_expirations e"
        " WHERE e.lot_id = lots.id) WHERE state = 'EXPIRED'"
    )
    # The run that expired a lot moves to its EXPIRE entry (whose metadata was empty).
    op.execute(
        'UPDATE transactions SET metadata = \'{"run_id": "\' || ('
        "SELECT MIN(e.run_id) FROM lot_expirations e WHERE e.transaction_id = transactions.id"
        ") || '\"}' WHERE type = 'EXPIRE' AND metadata = '{}' AND EXISTS ("
        "SELECT 1 FROM lot_expirations e"
        " WHERE e.transaction_id = transactions.id AND e.run_id IS NOT NULL)"
    )
    op.drop_table("lot_expirations")
    _run(_TRIGGER)
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
    _run(_DROP_TRIGGER)
    op.create_table(
        "lot_expirations",
        sa.Column("lot_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("transaction_id", sa.String(64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expired_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["lots.id"], name=op.f("fk_lot_expirations_lot_id_lots")
        ),
        sa.PrimaryKeyConstraint("lot_id", name=op.f("pk_lot_expirations")),
    )
    # Back from the lots and their EXPIRE allocations (the first expiry of each lot).
    op.execute(
        "INSERT INTO lot_expirations (lot_id, run_id, transaction_id, amount, expired_at_us)"
        " SELECT lots.id, NULL, (SELECT MIN(a.transaction_id) FROM allocations a"
        " JOIN transactions x ON x.id = a.transaction_id"
        " WHERE a.lot_id = lots.id AND x.type = 'EXPIRE'), lots.expired, lots.expired_at_us"
        " FROM lots WHERE lots.expired_at_us IS NOT NULL"
    )
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_column("expired_at_us")
