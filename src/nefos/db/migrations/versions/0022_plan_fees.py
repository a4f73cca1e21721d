"""marketplace plan fees: a subscription's charged fees and credits (one of each per
period), past_due subscriptions (one live subscription per organisation and listing),
why a subscription ended, and a consumer's calls by time (its invoice's lines)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 12:26:21.532599
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("status IN ('active', 'past_due')")
ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_calls_org_created", ["organisation_id", "created_at"], unique=False
        )
    op.create_table(
        "marketplace_subscription_charges",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("plan_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("period_start", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_end", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("amount", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("ledger_entry_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["marketplace_subscriptions.id"],
            name=op.f(
                "fk_marketplace_subscription_charges_subscription_id_marketplace_subscriptions"
            ),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_subscription_charges")),
        sa.UniqueConstraint(
            "subscription_id",
            "kind",
            "period_start",
            name="uq_marketplace_subscription_charges_period",
        ),
    )
    with op.batch_alter_table("marketplace_subscription_charges", schema=None) as batch_op:
        batch_op.create_index(
            "ix_marketplace_subscription_charges_org_created",
            ["organisation_id", "created_at"],
            unique=False,
        )

    with op.batch_alter_table("marketplace_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ended_reason", sa.String(length=16), nullable=True))
        batch_op.drop_index("uq_marketplace_subscriptions_active")
        batch_op.create_index(
            "ix_marketplace_subscriptions_renewal", ["status", "period_end"], unique=False
        )
        batch_op.create_index(
            "uq_marketplace_subscriptions_live",
            ["listing_id", "organisation_id"],
            unique=True,
            sqlite_where=LIVE,
            postgresql_where=LIVE,
        )


def downgrade() -> None:
    with op.batch_alter_table("marketplace_subscriptions", schema=None) as batch_op:
        batch_op.drop_index("uq_marketplace_subscriptions_live")
        batch_op.drop_index("ix_marketplace_subscriptions_renewal")
        batch_op.create_index(
            "uq_marketplace_subscriptions_active",
            ["listing_id", "organisation_id"],
            unique=True,
            sqlite_where=ACTIVE,
            postgresql_where=ACTIVE,
        )
        batch_op.drop_column("ended_reason")

    with op.batch_alter_table("marketplace_subscription_charges", schema=None) as batch_op:
        batch_op.drop_index("ix_marketplace_subscription_charges_org_created")

    op.drop_table("marketplace_subscription_charges")

    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_api_calls_org_created")
