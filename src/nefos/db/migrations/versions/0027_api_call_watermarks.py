"""api call watermarks: marketplace calls charged by closed windows of time

Each consumer organisation and currency gets a watermark (its priced calls at or
before it are charged) and each charged window a row (its count, sum and creators'
parts, for the recount); the calls lose ``charge_id`` and its two indexes and gain
an index of those in flight. An account's watermark starts at its last call charged
before the upgrade.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06 15:55:20.767203
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHARGED = sa.text("charge_id IS NOT NULL")
UNCHARGED = sa.text("charge_id IS NULL AND price > 0")
IN_FLIGHT = sa.text("status = 0")
NOT_RECOUNTED = sa.text("recounted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "api_call_watermarks",
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("charged_until", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("organisation_id", "currency", name=op.f("pk_api_call_watermarks")),
    )
    op.create_table(
        "api_call_windows",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("charged_after", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("charged_until", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("amount", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("recounted_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_call_windows")),
        sa.UniqueConstraint(
            "organisation_id",
            "currency",
            "charged_after",
            name="uq_api_call_windows_account_after",
        ),
    )
    with op.batch_alter_table("api_call_windows", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_call_windows_recount",
            ["charged_until"],
            unique=False,
            sqlite_where=NOT_RECOUNTED,
            postgresql_where=NOT_RECOUNTED,
        )
    # Each account charged so far: its watermark at its last call charged.
    op.execute(
        "INSERT INTO api_call_watermarks (organisation_id, currency, charged_until, updated_at)"
        " SELECT c.organisation_id, l.currency, MAX(c.created_at), MAX(c.created_at)"
        " FROM api_calls c JOIN marketplace_plans p ON p.id = c.plan_id"
        " JOIN marketplace_listings l ON l.id = p.listing_id"
        " WHERE c.charge_id IS NOT NULL GROUP BY c.organisation_id, l.currency"
    )
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_api_calls_charge", sqlite_where=CHARGED, postgresql_where=CHARGED)
        batch_op.drop_index(
            "ix_api_calls_uncharged", sqlite_where=UNCHARGED, postgresql_where=UNCHARGED
        )
        batch_op.create_index(
            "ix_api_calls_in_flight",
            ["created_at"],
            unique=False,
            sqlite_where=IN_FLIGHT,
            postgresql_where=IN_FLIGHT,
        )
        batch_op.drop_column("charge_id")


def downgrade() -> None:
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("charge_id", sa.String(length=36), nullable=True))
        batch_op.drop_index(
            "ix_api_calls_in_flight", sqlite_where=IN_FLIGHT, postgresql_where=IN_FLIGHT
        )
        batch_op.create_index(
            "ix_api_calls_uncharged",
            ["organisation_id"],
            unique=False,
            sqlite_where=UNCHARGED,
            postgresql_where=UNCHARGED,
        )
        batch_op.create_index(
            "ix_api_calls_charge",
            ["charge_id"],
            unique=False,
            sqlite_where=CHARGED,
            postgresql_where=CHARGED,
        )
    # The priced calls at or before their account's watermark: charged, by the
    # window that covered them (or, before any window, by the upgrade's mark).
    op.execute(
        "UPDATE api_calls SET charge_id = COALESCE((SELECT w.id FROM api_call_windows w"
        " WHERE w.organisation_id = api_calls.organisation_id"
        " AND api_calls.created_at > w.charged_after"
        " AND api_calls.created_at <= w.charged_until LIMIT 1), 'charged-before-0027')"
        " WHERE price > 0 AND created_at <= (SELECT MAX(m.charged_until)"
        " FROM api_call_watermarks m WHERE m.organisation_id = api_calls.organisation_id)"
    )
    with op.batch_alter_table("api_call_windows", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_api_call_windows_recount",
            sqlite_where=NOT_RECOUNTED,
            postgresql_where=NOT_RECOUNTED,
        )
    op.drop_table("api_call_windows")
    op.drop_table("api_call_watermarks")
