"""promotion code batches, codes and per-wallet redemptions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 15:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "promotion_batches",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("scheme_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("asset", sa.String(12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("sponsor_id", sa.String(64), nullable=False),
        sa.Column("expiry_policy", sa.Text(), nullable=True),
        sa.Column("max_per_code", sa.BigInteger(), nullable=False),
        sa.Column("max_per_wallet", sa.BigInteger(), nullable=False),
        sa.Column("valid_from_us", sa.BigInteger(), nullable=True),
        sa.Column("valid_until_us", sa.BigInteger(), nullable=True),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "amount > 0 AND max_per_code > 0 AND max_per_wallet > 0",
            name=op.f("ck_promotion_batches_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["scheme_id"], ["schemes.id"], name=op.f("fk_promotion_batches_scheme_id_schemes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotion_batches")),
    )
    op.create_table(
        "promotion_codes",
        sa.Column("scheme_id", sa.String(64), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("redemptions", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("max_redemptions", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "redemptions >= 0 AND redemptions <= max_redemptions",
            name=op.f("ck_promotion_codes_within_limit"),
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["promotion_batches.id"],
            name=op.f("fk_promotion_codes_batch_id_promotion_batches"),
        ),
        sa.ForeignKeyConstraint(
            ["scheme_id"], ["schemes.id"], name=op.f("fk_promotion_codes_scheme_id_schemes")
        ),
        sa.PrimaryKeyConstraint("scheme_id", "code", name=op.f("pk_promotion_codes")),
    )
    op.create_index(op.f("ix_promotion_codes_batch_id"), "promotion_codes", ["batch_id"])
    op.create_table(
        "code_redemptions",
        sa.Column("scheme_id", sa.String(64), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("redemptions", sa.BigInteger(), nullable=False),
        sa.Column("max_redemptions", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "redemptions >= 1 AND redemptions <= max_redemptions",
            name=op.f("ck_code_redemptions_within_limit"),
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_code_redemptions_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("scheme_id", "code", "wallet_id", name=op.f("pk_code_redemptions")),
    )


def downgrade() -> None:
    op.drop_table("code_redemptions")
    op.drop_index(op.f("ix_promotion_codes_batch_id"), table_name="promotion_codes")
    op.drop_table("promotion_codes")
    op.drop_table("promotion_batches")
