"""expire lots due at the same instant wallet by wallet

Lots due at the same instant are now taken in (expires_at_us, wallet_id, id) order, so a
chunk of an expiry run holds all of a wallet's due lots together and writes one EXPIRE entry
(and its postings) per wallet for all of them, and touches the wallet-keyed index pages of
one wallet once. The index that hands chunks their lots follows that order.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23 22:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_OLD = ["state", "expires_at_us", "id"]
_NEW = ["state", "expires_at_us", "wallet_id", "id"]


def _name(columns: list[str]) -> str:
    return "ix_lots_" + "_".join(columns)


def upgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(_name(_NEW), _NEW, unique=False)
        batch_op.drop_index(_name(_OLD))


def downgrade() -> None:
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index(_name(_OLD), _OLD, unique=False)
        batch_op.drop_index(_name(_NEW))
