"""customer events and the awards they produced (for ReverseEvent)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("scheme_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(12), nullable=False),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("returned_items", sa.Text(), server_default="{}", nullable=False),
        sa.Column("returned_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reference", sa.String(128), server_default="", nullable=False),
        sa.Column("occurred_at_us", sa.BigInteger(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "returned_amount >= 0 AND returned_amount <= amount",
            name=op.f("ck_customer_events_returned_range"),
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_customer_events_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_events")),
    )
    op.create_table(
        "event_awards",
        sa.Column("transaction_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("lot_id", sa.String(64), nullable=True),
        sa.Column("asset", sa.String(12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("instant", sa.Boolean(), nullable=False),
        sa.Column("sponsor_id", sa.String(64), nullable=False),
        sa.Column("merchant_id", sa.String(64), server_default="", nullable=False),
        sa.Column("reversed", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "reversed >= 0 AND reversed <= amount", name=op.f("ck_event_awards_reversed_range")
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["customer_events.id"],
            name=op.f("fk_event_awards_event_id_customer_events"),
        ),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["offers.id"], name=op.f("fk_event_awards_offer_id_offers")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_event_awards_transaction_id_transactions"),
        ),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f("pk_event_awards")),
    )
    op.create_index(op.f("ix_event_awards_event_id"), "event_awards", ["event_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_event_awards_event_id"), table_name="event_awards")
    op.drop_table("event_awards")
    op.drop_table("customer_events")
