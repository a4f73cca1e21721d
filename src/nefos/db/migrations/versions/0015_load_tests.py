"""load tests: scenarios, tests and their per-second timeline

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 06:07:22.862498
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "load_test_scenarios",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("requests", sa.JSON(), nullable=False),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_load_test_scenarios_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_load_test_scenarios_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_load_test_scenarios")),
        sa.UniqueConstraint("project_id", "name", name="uq_load_test_scenarios_project_id_name"),
    )
    with op.batch_alter_table("load_test_scenarios", schema=None) as batch_op:
        batch_op.create_index(
            "ix_load_test_scenarios_project_created_id",
            ["project_id", "created_at", "id"],
            unique=False,
        )

    op.create_table(
        "load_tests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("target_type", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=36), nullable=False),
        sa.Column("scenario", sa.String(length=100), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("histogram", sa.Text(), nullable=True),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("operation_id", sa.String(length=36), nullable=True),
        sa.Column("runner", sa.String(length=128), nullable=True),
        sa.Column("started_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_load_tests_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_load_tests_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_load_tests_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_load_tests")),
    )
    with op.batch_alter_table("load_tests", schema=None) as batch_op:
        batch_op.create_index(
            "ix_load_tests_org_status", ["organisation_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_load_tests_project_created_id", ["project_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "load_test_seconds",
        sa.Column("test_id", sa.String(length=36), nullable=False),
        sa.Column("second", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["test_id"],
            ["load_tests.id"],
            name=op.f("fk_load_test_seconds_test_id_load_tests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("test_id", "second", name=op.f("pk_load_test_seconds")),
    )


def downgrade() -> None:
    op.drop_table("load_test_seconds")
    with op.batch_alter_table("load_tests", schema=None) as batch_op:
        batch_op.drop_index("ix_load_tests_project_created_id")
        batch_op.drop_index("ix_load_tests_org_status")

    op.drop_table("load_tests")
    with op.batch_alter_table("load_test_scenarios", schema=None) as batch_op:
        batch_op.drop_index("ix_load_test_scenarios_project_created_id")

    op.drop_table("load_test_scenarios")
