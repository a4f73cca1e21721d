"""api calls by charge: the index the set-based charging groups a charge's calls by

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 12:31:47.001948
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHARGED = sa.text("charge_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_calls_charge",
            ["charge_id"],
            unique=False,
            sqlite_where=CHARGED,
            postgresql_where=CHARGED,
        )


def downgrade() -> None:
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_api_calls_charge", sqlite_where=CHARGED, postgresql_where=CHARGED)
