"""apis and their deployments (seed 002): an API is a container service with its
port, health-check path, base path and OpenAPI document; each change of its image,
environment or resources is a deployment

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 09:27:00.507918
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apis",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("container_id", sa.String(length=36), nullable=True),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("health_check_path", sa.String(length=256), nullable=False),
        sa.Column("base_path", sa.String(length=256), nullable=False),
        sa.Column("openapi", sa.JSON(), nullable=True),
        sa.Column("openapi_path", sa.String(length=256), nullable=True),
        sa.Column("deleted_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["container_id"],
            ["containers.id"],
            name=op.f("fk_apis_container_id_containers"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_apis_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_apis_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apis")),
        sa.UniqueConstraint("container_id", name=op.f("uq_apis_container_id")),
        sa.UniqueConstraint("slug", name=op.f("uq_apis_slug")),
    )
    with op.batch_alter_table("apis", schema=None) as batch_op:
        batch_op.create_index(
            "ix_apis_project_created_id", ["project_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "uq_apis_project_name_live",
            ["project_id", "name"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )

    op.create_table(
        "api_deployments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("api_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(length=500), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("rollback_of", sa.String(length=36), nullable=True),
        sa.Column("operation_id", sa.String(length=36), nullable=True),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_id"], ["apis.id"], name=op.f("fk_api_deployments_api_id_apis"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["operations.id"],
            name=op.f("fk_api_deployments_operation_id_operations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_deployments_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_deployments")),
        sa.UniqueConstraint("api_id", "number", name="uq_api_deployments_api_id_number"),
    )


def downgrade() -> None:
    op.drop_table("api_deployments")
    with op.batch_alter_table("apis", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_apis_project_name_live",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.drop_index("ix_apis_project_created_id")

    op.drop_table("apis")
