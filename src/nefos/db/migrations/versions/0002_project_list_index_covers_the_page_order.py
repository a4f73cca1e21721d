"""project list index covers the page order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 12:22:11.122980
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_projects_organisation_id_created_at"))
        batch_op.create_index(
            "ix_projects_org_created_id", ["organisation_id", "created_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_index("ix_projects_org_created_id")
        batch_op.create_index(
            batch_op.f("ix_projects_organisation_id_created_at"),
            ["organisation_id", "created_at"],
            unique=False,
        )
