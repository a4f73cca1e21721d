"""known_login_addresses: where each user signed in from (per-account back-off)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "known_login_addresses",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("ip_hash", sa.String(length=64), nullable=False),
        sa.Column("last_seen_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_known_login_addresses_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "ip_hash", name=op.f("pk_known_login_addresses")),
    )
    op.create_index(
        op.f("ix_known_login_addresses_last_seen_at"),
        "known_login_addresses",
        ["last_seen_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_known_login_addresses_last_seen_at"), table_name="known_login_addresses")
    op.drop_table("known_login_addresses")
