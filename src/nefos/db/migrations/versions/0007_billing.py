"""billing: catalogue, wallets and their ledger, usage records, invoices, payments,
quotes and payouts; billed_since on VMs, containers and volumes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 12:44:00.604980
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nefos.db.types

# Frozen here (not imported from the models): a migration describes one moment.
USAGE_RATED = (
    "resource_kind",
    "resource_id",
    "resource_name",
    "flavor",
    "state",
    "seconds",
    "cpu_milli",
    "memory_mb",
    "storage_gb",
    "instances",
    "network_bytes",
)

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("resource_kind", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("resource_name", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("cpu_milli", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("storage_gb", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("flavor", sa.String(length=64), nullable=True),
        sa.Column("network_bytes", sa.BigInteger(), nullable=False),
        sa.Column("charge_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint("key", name=op.f("uq_usage_records_key")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_org_started",
            ["organisation_id", "started_at"],
            unique=False,
            postgresql_include=list(USAGE_RATED),
        )
        batch_op.create_index(
            "ix_usage_records_resource_started",
            ["resource_kind", "resource_id", "started_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_usage_records_uncharged",
            ["organisation_id"],
            unique=False,
            sqlite_where=sa.text("charge_id IS NULL"),
            postgresql_where=sa.text("charge_id IS NULL"),
        )

    op.create_table(
        "billing_accounts",
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("margin_percent", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column(
            "low_balance_threshold", nefos.db.types.Amount(precision=30, scale=9), nullable=False
        ),
        sa.Column("low_balance_since", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("depleted_since", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("suspended_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_billing_accounts_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organisation_id", name=op.f("pk_billing_accounts")),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=True),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("corrects_id", sa.String(length=36), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("period_start", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("period_end", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subtotal", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("total", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("period_key", sa.String(length=120), nullable=True),
        sa.Column("finalized_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("due_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("paid_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("voided_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["corrects_id"],
            ["invoices.id"],
            name=op.f("fk_invoices_corrects_id_invoices"),
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_invoices_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("number", name=op.f("uq_invoices_number")),
        sa.UniqueConstraint("period_key", name=op.f("uq_invoices_period_key")),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invoices_corrects_id"), ["corrects_id"], unique=False)
        batch_op.create_index(
            "ix_invoices_org_period", ["organisation_id", "period_start", "id"], unique=False
        )

    op.create_table(
        "products",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=80), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=False),
        sa.Column("flavor", sa.String(length=64), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("unit_price", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("effective_from", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("effective_to", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_products_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
    )
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.create_index(
            "ix_products_currency_sku_from", ["currency", "sku", "effective_from"], unique=False
        )
        batch_op.create_index(
            "uq_products_in_force",
            ["currency", "sku"],
            unique=True,
            sqlite_where=sa.text("effective_to IS NULL"),
            postgresql_where=sa.text("effective_to IS NULL"),
        )

    op.create_table(
        "wallets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_wallets_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
        sa.UniqueConstraint(
            "organisation_id", "currency", name="uq_wallets_organisation_id_currency"
        ),
    )
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("invoice_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("resource_kind", sa.String(length=16), nullable=True),
        sa.Column("resource_id", sa.String(length=36), nullable=True),
        sa.Column("resource_name", sa.String(length=63), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=False),
        sa.Column("sku", sa.String(length=80), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("quantity", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("unit_price", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("amount", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("corrects_line_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["invoices.id"],
            name=op.f("fk_invoice_lines_invoice_id_invoices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
    )
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoice_lines_invoice_id"), ["invoice_id"], unique=False
        )

    op.create_table(
        "invoice_sequences",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_invoice_sequences")),
    )

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("balance_after", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("reference_kind", sa.String(length=32), nullable=True),
        sa.Column("reference_id", sa.String(length=64), nullable=True),
        sa.Column("key", sa.String(length=255), nullable=True),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_ledger_entries_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["wallets.id"],
            name=op.f("fk_ledger_entries_wallet_id_wallets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("wallet_id", "key", name="uq_ledger_entries_wallet_id_key"),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_entries_wallet_created_id", ["wallet_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "payments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("amount", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_ref", sa.String(length=255), nullable=True),
        sa.Column("client_secret", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("ledger_entry_id", sa.String(length=36), nullable=True),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("confirmed_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["confirmed_by"],
            ["users.id"],
            name=op.f("fk_payments_confirmed_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_payments_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_payments_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["wallets.id"],
            name=op.f("fk_payments_wallet_id_wallets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint(
            "organisation_id", "idempotency_key", name="uq_payments_organisation_id_idempotency_key"
        ),
        sa.UniqueConstraint("provider_ref", name=op.f("uq_payments_provider_ref")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payments_org_created_id", ["organisation_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_payments_wallet_id"), ["wallet_id"], unique=False)

    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=36), nullable=False),
        sa.Column("amount", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=200), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("ledger_entry_id", sa.String(length=36), nullable=True),
        sa.Column("requested_by", sa.String(length=36), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("processed_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_payouts_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"],
            ["users.id"],
            name=op.f("fk_payouts_requested_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["wallets.id"],
            name=op.f("fk_payouts_wallet_id_wallets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint(
            "organisation_id", "idempotency_key", name="uq_payouts_organisation_id_idempotency_key"
        ),
    )
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payouts_org_created_id", ["organisation_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_payouts_wallet_id"), ["wallet_id"], unique=False)

    op.create_table(
        "quotes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organisation_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("hours_per_month", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("monthly_total", nefos.db.types.Amount(precision=30, scale=9), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("valid_until", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=36), nullable=True),
        sa.Column("accepted_by", sa.String(length=36), nullable=True),
        sa.Column("accepted_at", nefos.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", nefos.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["accepted_by"],
            ["users.id"],
            name=op.f("fk_quotes_accepted_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_quotes_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_quotes_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_quotes_project_id_projects"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quotes")),
    )
    with op.batch_alter_table("quotes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_quotes_org_created_id", ["organisation_id", "created_at", "id"], unique=False
        )

    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("billed_since", nefos.db.types.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("billed_since", nefos.db.types.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("billed_since", nefos.db.types.UTCDateTime(timezone=True), nullable=True)
        )

    # The ledger is append-only: an entry is never changed (corrections are new entries).
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE ON ledger_entries "
            "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END"
        )
    else:
        op.execute(
            "CREATE FUNCTION ledger_entries_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'ledger entries are append-only'; END $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE ON ledger_entries "
            "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()"
        )

    _freeze_finalized_invoices()
    if op.get_bind().dialect.name == "postgresql":
        # A resource's records belong to one organisation: without this the planner
        # takes organisation x kind x id for as many groups as records, and sorts a
        # month on disk to rate it instead of hashing a few thousand resources.
        op.execute(
            "CREATE STATISTICS usage_records_resource (ndistinct, dependencies) "
            "ON organisation_id, resource_kind, resource_id FROM usage_records"
        )


# A finalized invoice never changes (corrections are credit notes): the lines of an
# invoice that is not a draft are neither added, changed nor removed, and of the
# invoice itself only the status moves (open to paid or void) with paid_at and
# voided_at. Removing a whole invoice (its organisation's deletion) takes its lines
# along: by then the invoice is gone, which the lines' check allows.
_FROZEN = "a finalized invoice cannot change (issue a credit note)"
# Columns of an invoice that are fixed once it is finalized.
_FIXED = (
    "id",
    "number",
    "organisation_id",
    "kind",
    "corrects_id",
    "currency",
    "period_start",
    "period_end",
    "subtotal",
    "total",
    "notes",
    "period_key",
    "finalized_at",
    "due_at",
    "created_at",
)
# (new, old) status pairs allowed once finalized.
_MOVES = "(OLD.status = 'open' AND NEW.status IN ('paid', 'void'))"
_STATUS_OK = f"(NEW.status = OLD.status OR {_MOVES})"
_STAMPS_OK = (
    "(OLD.paid_at IS NULL OR NEW.paid_at = OLD.paid_at) "
    "AND (OLD.voided_at IS NULL OR NEW.voided_at = OLD.voided_at)"
)


def _freeze_finalized_invoices() -> None:
    if op.get_bind().dialect.name == "sqlite":
        frozen = "SELECT RAISE(ABORT, '" + _FROZEN + "')"
        not_draft = "SELECT 1 FROM invoices WHERE id = {} AND status <> 'draft'"
        op.execute(
            "CREATE TRIGGER invoice_lines_frozen_insert BEFORE INSERT ON invoice_lines "
            f"WHEN EXISTS ({not_draft.format('NEW.invoice_id')}) BEGIN {frozen}; END"
        )
        op.execute(
            "CREATE TRIGGER invoice_lines_frozen_update BEFORE UPDATE ON invoice_lines "
            f"WHEN EXISTS ({not_draft.format('OLD.invoice_id')}) "
            f"OR EXISTS ({not_draft.format('NEW.invoice_id')}) BEGIN {frozen}; END"
        )
        op.execute(
            "CREATE TRIGGER invoice_lines_frozen_delete BEFORE DELETE ON invoice_lines "
            f"WHEN EXISTS ({not_draft.format('OLD.invoice_id')}) BEGIN {frozen}; END"
        )
        changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _FIXED)
        op.execute(
            "CREATE TRIGGER invoices_frozen BEFORE UPDATE ON invoices "
            f"WHEN OLD.status <> 'draft' AND ({changed} OR NOT {_STATUS_OK} "
            f"OR NOT ({_STAMPS_OK.replace(' = ', ' IS ')})) BEGIN {frozen}; END"
        )
        return
    raise_frozen = f"RAISE EXCEPTION '{_FROZEN}' USING ERRCODE = 'restrict_violation'"
    op.execute(  # constants only: nothing from outside reaches this SQL
        "CREATE FUNCTION invoice_lines_frozen() RETURNS trigger AS $$ BEGIN "  # noqa: S608
        "IF TG_OP <> 'INSERT' THEN "
        "IF EXISTS (SELECT 1 FROM invoices WHERE id = OLD.invoice_id AND status <> 'draft') "
        f"THEN {raise_frozen}; END IF; "
        "END IF; "
        "IF TG_OP <> 'DELETE' THEN "
        "IF EXISTS (SELECT 1 FROM invoices WHERE id = NEW.invoice_id AND status <> 'draft') "
        f"THEN {raise_frozen}; END IF; "
        "RETURN NEW; "
        "END IF; "
        "RETURN OLD; END $$ LANGUAGE plpgsql"
    )
    op.execute(
        "CREATE TRIGGER invoice_lines_frozen BEFORE INSERT OR UPDATE OR DELETE "
        "ON invoice_lines FOR EACH ROW EXECUTE FUNCTION invoice_lines_frozen()"
    )
    fixed_new = ", ".join(f"NEW.{c}" for c in _FIXED)
    fixed_old = ", ".join(f"OLD.{c}" for c in _FIXED)
    op.execute(
        "CREATE FUNCTION invoices_frozen() RETURNS trigger AS $$ BEGIN "
        f"IF OLD.status <> 'draft' AND (ROW({fixed_new}) IS DISTINCT FROM ROW({fixed_old}) "
        f"OR NOT {_STATUS_OK} "
        f"OR NOT ({_STAMPS_OK.replace(' = ', ' IS NOT DISTINCT FROM ')})) "
        f"THEN {raise_frozen}; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql"
    )
    op.execute(
        "CREATE TRIGGER invoices_frozen BEFORE UPDATE ON invoices "
        "FOR EACH ROW EXECUTE FUNCTION invoices_frozen()"
    )


def _thaw_invoices() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in (
            "invoices_frozen",
            "invoice_lines_frozen_insert",
            "invoice_lines_frozen_update",
            "invoice_lines_frozen_delete",
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        return
    op.execute("DROP TRIGGER IF EXISTS invoices_frozen ON invoices")
    op.execute("DROP FUNCTION IF EXISTS invoices_frozen()")
    op.execute("DROP TRIGGER IF EXISTS invoice_lines_frozen ON invoice_lines")
    op.execute("DROP FUNCTION IF EXISTS invoice_lines_frozen()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS usage_records_resource")
    _thaw_invoices()
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only")
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION IF EXISTS ledger_entries_append_only()")
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_column("billed_since")

    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_column("billed_since")

    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.drop_column("billed_since")

    with op.batch_alter_table("quotes", schema=None) as batch_op:
        batch_op.drop_index("ix_quotes_org_created_id")

    op.drop_table("quotes")
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payouts_wallet_id"))
        batch_op.drop_index("ix_payouts_org_created_id")

    op.drop_table("payouts")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_wallet_id"))
        batch_op.drop_index("ix_payments_org_created_id")

    op.drop_table("payments")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_wallet_created_id")

    op.drop_table("ledger_entries")
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_lines_invoice_id"))

    op.drop_table("invoice_lines")
    op.drop_table("invoice_sequences")
    op.drop_table("wallets")
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_products_in_force",
            sqlite_where=sa.text("effective_to IS NULL"),
            postgresql_where=sa.text("effective_to IS NULL"),
        )
        batch_op.drop_index("ix_products_currency_sku_from")

    op.drop_table("products")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_org_period")
        batch_op.drop_index(batch_op.f("ix_invoices_corrects_id"))

    op.drop_table("invoices")
    op.drop_table("billing_accounts")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_usage_records_uncharged",
            sqlite_where=sa.text("charge_id IS NULL"),
            postgresql_where=sa.text("charge_id IS NULL"),
        )
        batch_op.drop_index("ix_usage_records_resource_started")
        batch_op.drop_index("ix_usage_records_org_started")

    op.drop_table("usage_records")
