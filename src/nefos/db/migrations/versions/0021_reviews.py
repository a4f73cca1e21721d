"""marketplace reviews: one per consumer organisation and listing, 1-5 stars, the
creator's one reply

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 12:25:59.251126
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "marketplace_reviews",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("listing_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reply_text", sa.Text(), nullable=True),
        sa.Column("reply_user_id", sa.String(length=36), nullable=True),
        sa.Column("replied_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("stars BETWEEN 1 AND 5", name=op.f("ck_marketplace_reviews_stars")),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["marketplace_listings.id"],
            name=op.f("fk_marketplace_reviews_listing_id_marketplace_listings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_marketplace_reviews_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reply_user_id"],
            ["users.id"],
            name=op.f("fk_marketplace_reviews_reply_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_marketplace_reviews_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_reviews")),
        sa.UniqueConstraint(
            "listing_id", "organisation_id", name=op.f("uq_marketplace_reviews_listing_id")
        ),
    )
    with op.batch_alter_table("marketplace_reviews", schema=None) as batch_op:
        batch_op.create_index(
            "ix_marketplace_reviews_listing_created", ["listing_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_marketplace_reviews_organisation_id"), ["organisation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("marketplace_reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_marketplace_reviews_organisation_id"))
        batch_op.drop_index("ix_marketplace_reviews_listing_created")

    op.drop_table("marketplace_reviews")
