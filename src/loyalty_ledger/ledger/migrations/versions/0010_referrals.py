"""referrals: who referred a wallet, and when the referral was rewarded

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("referred_by", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("referral_rewarded_at_us", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.drop_column("referral_rewarded_at_us")
        batch_op.drop_column("referred_by")
