"""offers, their audit trail and per-wallet usage

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 15:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "offers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("scheme_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=True),
        sa.Column("budget_used", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("copied_from_offer_id", sa.String(64), nullable=True),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "budget_used >= 0 AND (budget IS NULL OR budget_used <= budget)",
            name=op.f("ck_offers_within_budget"),
        ),
        sa.ForeignKeyConstraint(
            ["scheme_id"], ["schemes.id"], name=op.f("fk_offers_scheme_id_schemes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    op.create_index(
        op.f("ix_offers_scheme_id_created_at_us_id"), "offers", ["scheme_id", "created_at_us", "id"]
    )
    op.create_index(op.f("ix_offers_scheme_id_status"), "offers", ["scheme_id", "status"])
    op.create_table(
        "offer_changes",
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), server_default="", nullable=False),
        sa.Column("snapshot", sa.Text(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["offers.id"], name=op.f("fk_offer_changes_offer_id_offers")
        ),
        sa.PrimaryKeyConstraint("offer_id", "version", name=op.f("pk_offer_changes")),
    )
    op.create_table(
        "offer_usage",
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("cap_window", sa.String(16), nullable=False),
        sa.Column("period_key", sa.String(16), nullable=False),
        sa.Column("award_count", sa.BigInteger(), nullable=False),
        sa.Column("award_amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["offers.id"], name=op.f("fk_offer_usage_offer_id_offers")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_offer_usage_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint(
            "offer_id", "wallet_id", "cap_window", "period_key", name=op.f("pk_offer_usage")
        ),
    )


def downgrade() -> None:
    op.drop_table("offer_usage")
    op.drop_table("offer_changes")
    op.drop_index(op.f("ix_offers_scheme_id_status"), table_name="offers")
    op.drop_index(op.f("ix_offers_scheme_id_created_at_us_id"), table_name="offers")
    op.drop_table("offers")
