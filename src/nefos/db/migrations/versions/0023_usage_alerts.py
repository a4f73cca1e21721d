"""usage alerts: one row per subscription, period and threshold of its quota crossed
(the row that makes each usage_alert told once); api_calls.request_id holds the
subscription's id and a whole request id of up to 64 characters

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 12:25:35.734036
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_alerts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("period_start", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("quota", sa.Integer(), nullable=False),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["marketplace_subscriptions.id"],
            name=op.f("fk_usage_alerts_subscription_id_marketplace_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_alerts")),
        sa.UniqueConstraint(
            "subscription_id",
            "period_start",
            "threshold",
            name="uq_usage_alerts_subscription_period_threshold",
        ),
    )

    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.alter_column(
            "request_id",
            existing_type=sa.String(length=64),
            type_=sa.String(length=101),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.alter_column(
            "request_id",
            existing_type=sa.String(length=101),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    op.drop_table("usage_alerts")
