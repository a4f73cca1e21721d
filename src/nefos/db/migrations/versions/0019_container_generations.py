"""container generations: which spec a container holds and each replica runs

A rolling update (``PUT /containers/{id}``) changes a container's image,
environment, command or resources and replaces its replicas one at a time; the
container's ``generation`` names its spec and each replica's the spec it was made
with. Existing rows are generation 1.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "containers", sa.Column("generation", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column(
        "container_replicas",
        sa.Column("generation", sa.Integer(), nullable=False, server_default="1"),
    )


def downgrade() -> None:
    with op.batch_alter_table("container_replicas") as batch:
        batch.drop_column("generation")
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("generation")
