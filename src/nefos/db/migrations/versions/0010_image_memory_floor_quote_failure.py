"""images.min_memory_mb (checked before a VM is accepted); quotes.failure_reason

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 00:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("min_memory_mb", sa.Integer(), nullable=True))
    with op.batch_alter_table("quotes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quotes", schema=None) as batch_op:
        batch_op.drop_column("failure_reason")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("min_memory_mb")
