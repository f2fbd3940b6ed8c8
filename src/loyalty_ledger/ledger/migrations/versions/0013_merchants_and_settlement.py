"""merchants, merchant groups, contribution shares, settlement statements

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ID = sa.String(64)


def upgrade() -> None:
    with op.batch_alter_table("schemes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("contributions", sa.Text(), nullable=False, server_default="[]")
        )
    op.create_index(
        op.f("ix_transactions_scheme_id_created_at_us"),
        "transactions",
        ["scheme_id", "created_at_us"],
    )
    op.create_table(
        "merchants",
        sa.Column("scheme_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scheme_id"], ["schemes.id"], name=op.f("fk_merchants_scheme_id_schemes")
        ),
        sa.PrimaryKeyConstraint("scheme_id", "id", name=op.f("pk_merchants")),
    )
    op.create_index(
        op.f("ix_merchants_scheme_id_created_at_us_id"),
        "merchants",
        ["scheme_id", "created_at_us", "id"],
    )
    op.create_table(
        "merchant_groups",
        sa.Column("scheme_id", ID, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scheme_id"], ["schemes.id"], name=op.f("fk_merchant_groups_scheme_id_schemes")
        ),
        sa.PrimaryKeyConstraint("scheme_id", "id", name=op.f("pk_merchant_groups")),
    )
    op.create_table(
        "merchant_group_members",
        sa.Column("scheme_id", ID, nullable=False),
        sa.Column("group_id", ID, nullable=False),
        sa.Column("merchant_id", ID, nullable=False),
        sa.PrimaryKeyConstraint(
            "scheme_id", "group_id", "merchant_id", name=op.f("pk_merchant_group_members")
        ),
    )
    op.create_index(
        op.f("ix_merchant_group_members_scheme_id_merchant_id"),
        "merchant_group_members",
        ["scheme_id", "merchant_id"],
    )
    op.create_table(
        "statements",
        sa.Column("id", ID, nullable=False),
        sa.Column("scheme_id", ID, nullable=False),
        sa.Column("party_id", ID, nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("period_end_us", sa.BigInteger(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "sequence >= 1 AND period_start_us < period_end_us", name=op.f("ck_statements_valid")
        ),
        sa.ForeignKeyConstraint(
            ["scheme_id"], ["schemes.id"], name=op.f("fk_statements_scheme_id_schemes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statements")),
        sa.UniqueConstraint(
            "scheme_id",
            "party_id",
            "sequence",
            name=op.f("uq_statements_scheme_id_party_id_sequence"),
        ),
        sa.UniqueConstraint(
            "scheme_id",
            "party_id",
            "period_start_us",
            name=op.f("uq_statements_scheme_id_party_id_period_start_us"),
        ),
    )
    op.create_index(
        op.f("ix_statements_scheme_id_period_start_us_party_id"),
        "statements",
        ["scheme_id", "period_start_us", "party_id"],
    )
    op.create_table(
        "statement_lines",
        sa.Column("statement_id", ID, nullable=False),
        sa.Column("asset", sa.String(12), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "issued",
                "reversed",
                "expired",
                "redeemed_elsewhere",
                "accepted",
                "refunded",
                "net",
                "net_value",
            )
        ),
        sa.Column("value_currency", sa.String(12), nullable=False),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
            name=op.f("fk_statement_lines_statement_id_statements"),
        ),
        sa.PrimaryKeyConstraint("statement_id", "asset", name=op.f("pk_statement_lines")),
    )
    op.create_table(
        "statement_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("statement_id", ID, nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("asset", sa.String(12), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", ID, nullable=False),
        sa.Column("counterparty_id", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
            name=op.f("fk_statement_entries_statement_id_statements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_entries")),
    )
    op.create_index(
        op.f("ix_statement_entries_statement_id_id"), "statement_entries", ["statement_id", "id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_statement_entries_statement_id_id"), table_name="statement_entries")
    op.drop_table("statement_entries")
    op.drop_table("statement_lines")
    op.drop_index(op.f("ix_statements_scheme_id_period_start_us_party_id"), table_name="statements")
    op.drop_table("statements")
    op.drop_index(
        op.f("ix_merchant_group_members_scheme_id_merchant_id"),
        table_name="merchant_group_members",
    )
    op.drop_table("merchant_group_members")
    op.drop_table("merchant_groups")
    op.drop_index(op.f("ix_merchants_scheme_id_created_at_us_id"), table_name="merchants")
    op.drop_table("merchants")
    op.drop_index(op.f("ix_transactions_scheme_id_created_at_us"), table_name="transactions")
    with op.batch_alter_table("schemes", schema=None) as batch_op:
        batch_op.drop_column("contributions")
