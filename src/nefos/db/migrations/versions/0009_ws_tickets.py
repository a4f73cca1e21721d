"""ws_tickets: one-time tickets for the WebSocket handshake

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ws_tickets",
        sa.Column("ticket_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("api_key_id", sa.String(length=36), nullable=True),
        sa.Column("credential_expires_at", nefos.db.types.UTCDateTime(), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_ws_tickets_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["auth_sessions.id"],
            name=op.f("fk_ws_tickets_session_id_auth_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_ws_tickets_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ticket_hash", name=op.f("pk_ws_tickets")),
    )
    op.create_index(op.f("ix_ws_tickets_api_key_id"), "ws_tickets", ["api_key_id"], unique=False)
    op.create_index(op.f("ix_ws_tickets_expires_at"), "ws_tickets", ["expires_at"], unique=False)
    op.create_index(op.f("ix_ws_tickets_session_id"), "ws_tickets", ["session_id"], unique=False)
    op.create_index(op.f("ix_ws_tickets_user_id"), "ws_tickets", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ws_tickets_user_id"), table_name="ws_tickets")
    op.drop_index(op.f("ix_ws_tickets_session_id"), table_name="ws_tickets")
    op.drop_index(op.f("ix_ws_tickets_expires_at"), table_name="ws_tickets")
    op.drop_index(op.f("ix_ws_tickets_api_key_id"), table_name="ws_tickets")
    op.drop_table("ws_tickets")
