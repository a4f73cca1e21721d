"""services of VMs: a VM's service port, and service rows for containers or VMs

A VM that declares ``service_port`` is a service, as every container is. The
tenant's settings of a service (``service_settings``, keyed by a container) and each
instance's health (``service_instance_health``, keyed by a replica) move to
``services`` and ``service_health``, whose rows belong to a container or a VM (each
through its own foreign key, so each still goes with what it describes). Rows are
copied across; nothing is lost.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 09:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("vms", sa.Column("service_port", sa.Integer(), nullable=True))
    op.create_table(
        "services",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("container_id", sa.String(length=36), nullable=True),
        sa.Column("vm_id", sa.String(length=36), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("check", sa.JSON(), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "(container_id IS NOT NULL AND vm_id IS NULL AND id = container_id)"
            " OR (vm_id IS NOT NULL AND container_id IS NULL AND id = vm_id)",
            name=op.f("ck_services_one_workload"),
        ),
        sa.ForeignKeyConstraint(
            ["container_id"],
            ["containers.id"],
            name=op.f("fk_services_container_id_containers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["vms.id"], name=op.f("fk_services_vm_id_vms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("container_id", name=op.f("uq_services_container_id")),
        sa.UniqueConstraint("vm_id", name=op.f("uq_services_vm_id")),
    )
    op.create_table(
        "service_health",
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("service_id", sa.String(length=36), nullable=False),
        sa.Column("replica_id", sa.String(length=36), nullable=True),
        sa.Column("container_id", sa.String(length=36), nullable=True),
        sa.Column("vm_id", sa.String(length=36), nullable=True),
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
        sa.CheckConstraint(
            "(replica_id IS NOT NULL AND container_id IS NOT NULL AND vm_id IS NULL"
            " AND instance_id = replica_id AND service_id = container_id)"
            " OR (vm_id IS NOT NULL AND replica_id IS NULL AND container_id IS NULL"
            " AND instance_id = vm_id AND service_id = vm_id)",
            name=op.f("ck_service_health_one_instance"),
        ),
        sa.ForeignKeyConstraint(
            ["container_id"],
            ["containers.id"],
            name=op.f("fk_service_health_container_id_containers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["replica_id"],
            ["container_replicas.id"],
            name=op.f("fk_service_health_replica_id_container_replicas"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vm_id"], ["vms.id"], name=op.f("fk_service_health_vm_id_vms"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_service_health")),
        sa.UniqueConstraint("replica_id", name=op.f("uq_service_health_replica_id")),
        sa.UniqueConstraint("vm_id", name=op.f("uq_service_health_vm_id")),
    )
    op.create_index(
        op.f("ix_service_health_container_id"), "service_health", ["container_id"], unique=False
    )
    op.create_index(
        op.f("ix_service_health_service_id"), "service_health", ["service_id"], unique=False
    )
    op.execute(
        'INSERT INTO services (id, container_id, vm_id, version, tags, metadata, "check",'
        ' created_at, updated_at) SELECT id, id, NULL, version, tags, metadata, "check",'
        " created_at, updated_at FROM service_settings"
    )
    op.execute(
        "INSERT INTO service_health (instance_id, service_id, replica_id, container_id, vm_id,"
        " status, output, successes, failures, maintenance, maintenance_reason, checks,"
        " transitions, checked_at, changed_at) SELECT replica_id, container_id, replica_id,"
        " container_id, NULL, status, output, successes, failures, maintenance,"
        " maintenance_reason, checks, transitions, checked_at, changed_at"
        " FROM service_instance_health"
    )
    op.drop_index(
        op.f("ix_service_instance_health_container_id"), table_name="service_instance_health"
    )
    op.drop_table("service_instance_health")
    op.drop_table("service_settings")


def downgrade() -> None:
    # The rows of containers go back; a VM's (it was no service before) are dropped.
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
    op.execute(
        'INSERT INTO service_settings (id, version, tags, metadata, "check", created_at,'
        ' updated_at) SELECT id, version, tags, metadata, "check", created_at, updated_at'
        " FROM services WHERE container_id IS NOT NULL"
    )
    op.execute(
        "INSERT INTO service_instance_health (replica_id, container_id, status, output,"
        " successes, failures, maintenance, maintenance_reason, checks, transitions,"
        " checked_at, changed_at) SELECT replica_id, container_id, status, output,"
        " successes, failures, maintenance, maintenance_reason, checks, transitions,"
        " checked_at, changed_at FROM service_health WHERE replica_id IS NOT NULL"
    )
    op.drop_index(op.f("ix_service_health_service_id"), table_name="service_health")
    op.drop_index(op.f("ix_service_health_container_id"), table_name="service_health")
    op.drop_table("service_health")
    op.drop_table("services")
    op.drop_column("vms", "service_port")
