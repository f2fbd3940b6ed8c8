"""index lots in expiry order; partial indexes on transactions

An expiry chunk takes the first due lots in (expires_at_us, id) order. With the index on
(state, expires_at_us) alone, lots that share an expiry instant had to be sorted on every
chunk: quadratic over a large backlog. This index hands them over in order.

Most transactions have no counterpart wallet and no related transaction; indexing only the
rows that have one saves two index writes per entry (expiry runs write millions).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PARTIAL = {
    "counterpart_wallet_id": ["counterpart_wallet_id", "created_at_us", "id"],
    "related_transaction_id": ["related_transaction_id"],
}


def _name(columns: list[str]) -> str:
    return "ix_transactions_" + "_".join(columns)


def upgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_lots_state_expires_at_us_id"),
            ["state", "expires_at_us", "id"],
            unique=False,
        )
        batch_op.drop_index(batch_op.f("ix_lots_state_expires_at_us"))
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        for column, columns in _PARTIAL.items():
            where = sa.text(f"{column} IS NOT NULL")
            batch_op.drop_index(_name(columns))
            batch_op.create_index(
                _name(columns), columns, unique=False, sqlite_where=where, postgresql_where=where
            )


def downgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_lots_state_expires_at_us"), ["state", "expires_at_us"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_lots_state_expires_at_us_id"))
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        for columns in _PARTIAL.values():
            batch_op.drop_index(_name(columns))
            batch_op.create_index(_name(columns), columns, unique=False)
