"""monitoring metrics: raw samples, 1-minute and 1-hour rollups

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 09:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key_columns(time_column: str) -> list[sa.Column[object]]:
    return [
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column(time_column, sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "metric_samples",
        *_key_columns("ts"),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", "metric", "ts", name=op.f("pk_metric_samples")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_metric_samples_ts", "metric_samples", ["ts"], unique=False)
    for table in ("metric_rollups_1m", "metric_rollups_1h"):
        op.create_table(
            table,
            *_key_columns("bucket"),
            sa.Column("avg", sa.Float(), nullable=False),
            sa.Column("min", sa.Float(), nullable=False),
            sa.Column("max", sa.Float(), nullable=False),
            sa.Column("count", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("resource_id", "metric", "bucket", name=op.f(f"pk_{table}")),
            sqlite_with_rowid=False,
        )
        op.create_index(f"ix_{table}_bucket", table, ["bucket"], unique=False)


def downgrade() -> None:
    for table in ("metric_rollups_1h", "metric_rollups_1m"):
        op.drop_index(f"ix_{table}_bucket", table_name=table)
        op.drop_table(table)
    op.drop_index("ix_metric_samples_ts", table_name="metric_samples")
    op.drop_table("metric_samples")
