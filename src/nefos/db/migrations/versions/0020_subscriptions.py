"""marketplace subscriptions (a plan version per consumer organisation), their keys
(SHA-256 only), and the gateway's calls (seed 002's api_calls, one per request id)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 10:04:52.780984
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "marketplace_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("listing_id", sa.String(length=36), nullable=False),
        sa.Column("plan_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("period_start", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_end", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("ended_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["marketplace_listings.id"],
            name=op.f("fk_marketplace_subscriptions_listing_id_marketplace_listings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_marketplace_subscriptions_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["marketplace_plans.id"],
            name=op.f("fk_marketplace_subscriptions_plan_id_marketplace_plans"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_marketplace_subscriptions_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_subscriptions")),
    )
    with op.batch_alter_table("marketplace_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_marketplace_subscriptions_organisation_id"),
            ["organisation_id"],
            unique=False,
        )
        batch_op.create_index(
            "uq_marketplace_subscriptions_active",
            ["listing_id", "organisation_id"],
            unique=True,
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        )

    op.create_table(
        "api_calls",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("api_id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=True),
        sa.Column("plan_id", sa.String(length=36), nullable=True),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("price", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("charge_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_id"], ["apis.id"], name=op.f("fk_api_calls_api_id_apis"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["marketplace_subscriptions.id"],
            name=op.f("fk_api_calls_subscription_id_marketplace_subscriptions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_calls")),
        sa.UniqueConstraint("request_id", name=op.f("uq_api_calls_request_id")),
    )
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.create_index("ix_api_calls_api_created", ["api_id", "created_at"], unique=False)
        batch_op.create_index(
            "ix_api_calls_subscription_created", ["subscription_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_api_calls_uncharged",
            ["organisation_id"],
            unique=False,
            sqlite_where=sa.text("charge_id IS NULL AND price > 0"),
            postgresql_where=sa.text("charge_id IS NULL AND price > 0"),
        )

    op.create_table(
        "marketplace_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["marketplace_subscriptions.id"],
            name=op.f("fk_marketplace_keys_subscription_id_marketplace_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_marketplace_keys_key_hash")),
    )
    with op.batch_alter_table("marketplace_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_marketplace_keys_subscription_id"), ["subscription_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("marketplace_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_marketplace_keys_subscription_id"))

    op.drop_table("marketplace_keys")
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_api_calls_uncharged",
            sqlite_where=sa.text("charge_id IS NULL AND price > 0"),
            postgresql_where=sa.text("charge_id IS NULL AND price > 0"),
        )
        batch_op.drop_index("ix_api_calls_subscription_created")
        batch_op.drop_index("ix_api_calls_api_created")

    op.drop_table("api_calls")
    with op.batch_alter_table("marketplace_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_marketplace_subscriptions_active",
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        )
        batch_op.drop_index(batch_op.f("ix_marketplace_subscriptions_organisation_id"))

    op.drop_table("marketplace_subscriptions")
