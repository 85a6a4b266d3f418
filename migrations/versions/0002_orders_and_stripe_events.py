"""orders and stripe events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:47:17.536129
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_event",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bot", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paid_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "checkout_session_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "stripe_customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "stripe_subscription_id",
                sqlmodel.sql.sqltypes.AutoString(length=255),
                nullable=True,
            )
        )
        batch_op.create_index(
            batch_op.f("ix_bot_stripe_subscription_id"), ["stripe_subscription_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("bot", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bot_stripe_subscription_id"))
        batch_op.drop_column("stripe_subscription_id")
        batch_op.drop_column("stripe_customer_id")
        batch_op.drop_column("checkout_session_id")
        batch_op.drop_column("paid_until")

    op.drop_table("stripe_event")
