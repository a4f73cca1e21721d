"""marketplace: listings of APIs, their versioned plans, and a full-text index of
the listings (an FTS5 table on SQLite, a tsvector table with a GIN index on
PostgreSQL; not in the models: services.marketplace writes and reads it)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 09:51:02.600505
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "marketplace_listings",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("api_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("title", sa.String(length=120), nullable=False),
        sa.Column("summary", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("published_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_id"],
            ["apis.id"],
            name=op.f("fk_marketplace_listings_api_id_apis"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_marketplace_listings_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_marketplace_listings_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_listings")),
        sa.UniqueConstraint("api_id", name=op.f("uq_marketplace_listings_api_id")),
    )
    with op.batch_alter_table("marketplace_listings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_marketplace_listings_browse", ["status", "visibility", "published_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_marketplace_listings_organisation_id"), ["organisation_id"], unique=False
        )

    op.create_table(
        "marketplace_plans",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("listing_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("model", sa.String(length=16), nullable=False),
        sa.Column("price_per_call", nefos.db.types.Amount(precision=30, scale=9), nullable=True),
        sa.Column("monthly_price", nefos.db.types.Amount(precision=30, scale=9), nullable=True),
        sa.Column("included_calls", sa.BigInteger(), nullable=True),
        sa.Column("overage_price", nefos.db.types.Amount(precision=30, scale=9), nullable=True),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=False),
        sa.Column("retired_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["marketplace_listings.id"],
            name=op.f("fk_marketplace_plans_listing_id_marketplace_listings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_plans")),
        sa.UniqueConstraint(
            "listing_id", "key", "version", name="uq_marketplace_plans_listing_key_version"
        ),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE marketplace_search USING fts5("
            "listing_id UNINDEXED, title, summary, description, tags,"
            " tokenize = 'porter unicode61')"
        )
    else:
        op.execute(
            "CREATE TABLE marketplace_search ("
            " listing_id VARCHAR(36) PRIMARY KEY"
            " REFERENCES marketplace_listings (id) ON DELETE CASCADE,"
            " document TSVECTOR NOT NULL)"
        )
        op.execute(
            "CREATE INDEX ix_marketplace_search_document ON marketplace_search USING GIN (document)"
        )


def downgrade() -> None:
    op.execute("DROP TABLE marketplace_search")
    op.drop_table("marketplace_plans")
    with op.batch_alter_table("marketplace_listings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_marketplace_listings_organisation_id"))
        batch_op.drop_index("ix_marketplace_listings_browse")

    op.drop_table("marketplace_listings")
