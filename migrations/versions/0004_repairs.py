"""repairs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 12:19:16.968803
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "repair",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("bot_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["bot_id"], ["bot.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("repair", schema=None) as batch_op:
        batch_op.create_index("ix_repair_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("repair", schema=None) as batch_op:
        batch_op.drop_index("ix_repair_at")
    op.drop_table("repair")
