"""services: a tenant's settings of each service, and each instance's health

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 06:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_settings",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("check", sa.JSON(), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["id"],
            ["containers.id"],
            name=op.f("fk_service_settings_id_containers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_settings")),
    )
    op.create_table(
        "service_instance_health",
        sa.Column("replica_id", sa.String(length=36), nullable=False),
        sa.Column("container_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.Column("maintenance_reason", sa.String(length=500), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("transitions", sa.JSON(), nullable=False),
        sa.Column("checked_at", nefos.db.types.UTCDateTime(), nullable=True),
        sa.Column("changed_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["container_id"],
            ["containers.id"],
            name=op.f("fk_service_instance_health_container_id_containers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["replica_id"],
            ["container_replicas.id"],
            name=op.f("fk_service_instance_health_replica_id_container_replicas"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("replica_id", name=op.f("pk_service_instance_health")),
    )
    op.create_index(
        op.f("ix_service_instance_health_container_id"),
        "service_instance_health",
        ["container_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_service_instance_health_container_id"), table_name="service_instance_health"
    )
    op.drop_table("service_instance_health")
    op.drop_table("service_settings")
