"""marketplace invitations: invitations of organisations and e-mail addresses to
private listings (who besides the seller sees one, and may subscribe)

Revision ID: 0026
Revises: 0024
Create Date: 2026-12-06 15:53:14.558416
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0026"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "marketplace_invitations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("listing_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("invited_by", sa.String(length=36), nullable=True),
        sa.Column("accepted_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "email IS NOT NULL OR organisation_id IS NOT NULL",
            name=op.f("ck_marketplace_invitations_invitee"),
        ),
        sa.ForeignKeyConstraint(
            ["accepted_by"],
            ["users.id"],
            name=op.f("fk_marketplace_invitations_accepted_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["invited_by"],
            ["users.id"],
            name=op.f("fk_marketplace_invitations_invited_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["marketplace_listings.id"],
            name=op.f("fk_marketplace_invitations_listing_id_marketplace_listings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_marketplace_invitations_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_marketplace_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_marketplace_invitations_token_hash")),
    )
    with op.batch_alter_table("marketplace_invitations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_marketplace_invitations_listing_created", ["listing_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_marketplace_invitations_org_listing",
            ["organisation_id", "listing_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("marketplace_invitations", schema=None) as batch_op:
        batch_op.drop_index("ix_marketplace_invitations_org_listing")
        batch_op.drop_index("ix_marketplace_invitations_listing_created")

    op.drop_table("marketplace_invitations")
