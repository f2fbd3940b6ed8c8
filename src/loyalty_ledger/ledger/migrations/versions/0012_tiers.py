"""tier programmes on schemes, tiers on wallets, and the tier change log

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 17:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schemes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tier_program", sa.Text(), nullable=True))
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tier_id", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("tier_since_us", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("tier_checked_us", sa.BigInteger(), nullable=True))
    op.create_table(
        "tier_changes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("scheme_id", sa.String(64), nullable=False),
        sa.Column("from_tier", sa.String(64), nullable=True),
        sa.Column("to_tier", sa.String(64), nullable=True),
        sa.Column("qualifying", sa.BigInteger(), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_tier_changes_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tier_changes")),
    )
    op.create_index(
        op.f("ix_tier_changes_wallet_id_created_at_us_id"),
        "tier_changes",
        ["wallet_id", "created_at_us", "id"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_tier_changes_wallet_id_created_at_us_id"), table_name="tier_changes")
    op.drop_table("tier_changes")
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.drop_column("tier_checked_us")
        batch_op.drop_column("tier_since_us")
        batch_op.drop_column("tier_id")
    with op.batch_alter_table("schemes", schema=None) as batch_op:
        batch_op.drop_column("tier_program")
