"""API keys; the merchant of each customer event

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("scheme_ids", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("merchant_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_index(op.f("ix_api_keys_created_at_us_id"), "api_keys", ["created_at_us", "id"])
    with op.batch_alter_table("customer_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("merchant_id", sa.String(64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("customer_events", schema=None) as batch_op:
        batch_op.drop_column("merchant_id")
    op.drop_index(op.f("ix_api_keys_created_at_us_id"), table_name="api_keys")
    op.drop_table("api_keys")
