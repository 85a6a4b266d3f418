"""llm ledger and accounts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 11:51:56.703320
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bot_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("ref", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bot_id"],
            ["bot.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref"),
    )
    with op.batch_alter_table("ledger_entry", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_entry_bot_at", ["bot_id", "at"], unique=False)
        batch_op.create_index("ix_ledger_entry_at", ["at"], unique=False)

    op.create_table(
        "llm_account",
        sa.Column("bot_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("balance_micro", sa.BigInteger(), nullable=False),
        sa.Column("reference_micro", sa.BigInteger(), nullable=False),
        sa.Column("alerted_percent", sa.Integer(), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bot_id"],
            ["bot.id"],
        ),
        sa.PrimaryKeyConstraint("bot_id"),
    )


def downgrade() -> None:
    op.drop_table("llm_account")
    with op.batch_alter_table("ledger_entry", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entry_at")
        batch_op.drop_index("ix_ledger_entry_bot_at")

    op.drop_table("ledger_entry")
