"""wallet birthdays and the birthday run's record

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 15:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("birth_month", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("birth_day", sa.Integer(), nullable=True))
    op.create_table(
        "birthday_events",
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["wallets.id"], name=op.f("fk_birthday_events_wallet_id_wallets")
        ),
        sa.PrimaryKeyConstraint("wallet_id", "year", name=op.f("pk_birthday_events")),
    )


def downgrade() -> None:
    op.drop_table("birthday_events")
    with op.batch_alter_table("wallets", schema=None) as batch_op:
        batch_op.drop_column("birth_day")
        batch_op.drop_column("birth_month")
