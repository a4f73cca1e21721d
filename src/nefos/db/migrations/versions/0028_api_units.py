"""api units: an API's per-endpoint units and the answer's header that overrides them

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-06 15:55:35.796892
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("apis", schema=None) as batch_op:
        batch_op.add_column(sa.Column("units", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("units_header", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apis", schema=None) as batch_op:
        batch_op.drop_column("units_header")
        batch_op.drop_column("units")
