"""Invoices and credit notes: reading them (an organisation's own, a reseller's
children's, or for platform admins every one) and the platform admins' actions
(generate a draft, finalize, void, credit). The invoicing itself is
``nefos.billing.invoices``; the billing engine finalizes finished periods.

Drafts are the platform's working copies: only platform admins see them. Another
tenant's invoice reads as a missing one (404).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import invoices
from nefos.billing.money import ZERO, money_str
from nefos.db.models import Invoice, InvoiceLine, Organisation
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.billing import CreditNoteCreate, InvoiceCreate
from nefos.services.billing import BillingService
from nefos.services.paging import fetch_page
from nefos.services.principal import MAX_ORG_DEPTH, Principal, authorize_org

READ = Permission.BILLING_READ
API_PREFIX = "/api/v1"


def html_url(invoice_id: str) -> str:
    return f"{API_PREFIX}/invoices/{invoice_id}/html"


def invoice_public(inv: Invoice, credited: Decimal = ZERO) -> dict[str, Any]:
    cur = inv.currency
    return {
        "id": inv.id,
        "number": inv.number,
        "organisation_id": inv.organisation_id,
        "kind": inv.kind,
        "corrects_id": inv.corrects_id,
        "currency": cur,
        "period_start": inv.period_start,
        "period_end": inv.period_end,
        "period": invoices.period_label(inv.period_start, inv.period_end),
        "status": inv.status,
        "subtotal": money_str(inv.subtotal, cur),
        "total": money_str(inv.total, cur),
        "credited": money_str(credited, cur),
        "notes": inv.notes,
        "finalized_at": inv.finalized_at,
        "due_at": inv.due_at,
        "paid_at": inv.paid_at,
        "voided_at": inv.voided_at,
        "created_at": inv.created_at,
        "updated_at": inv.updated_at,
        "html_url": html_url(inv.id),
    }


def line_public(ln: InvoiceLine, currency: str) -> dict[str, Any]:
    return {
        "id": ln.id,
        "position": ln.position,
        "resource_kind": ln.resource_kind,
        "resource_id": ln.resource_id,
        "resource_name": ln.resource_name,
        "meter": ln.meter,
        "sku": ln.sku,
        "description": ln.description,
        "quantity": f"{ln.quantity.normalize():f}",
        "unit": ln.unit,
        "unit_price": money_str(ln.unit_price, currency),
        "amount": money_str(ln.amount, currency),
        "corrects_line_id": ln.corrects_line_id,
    }


def bill_public(inv: Invoice, credited: Decimal = ZERO) -> dict[str, Any]:
    """Seed 004's bill."""
    return {
        "id": inv.id,
        "number": inv.number,
        "period": invoices.period_label(inv.period_start, inv.period_end),
        "period_start": inv.period_start,
        "period_end": inv.period_end,
        "amount": money_str(inv.total, inv.currency),
        "credited": money_str(credited, inv.currency),
        "currency": inv.currency,
        "status": inv.status,
        "due_date": inv.due_at,
        "paid_date": inv.paid_at,
        "html_url": html_url(inv.id),
    }


def _utc(value: datetime, field: str) -> datetime:
    """A time from the wire in UTC (one without a zone is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationFailed(f"{field} is out of range", **{field: "out of range"}) from None


def require_platform(principal: Principal) -> None:
    principal.require_scope(Permission.PLATFORM_ADMIN)
    if not principal.is_admin:
        raise Forbidden("Platform administrators only")


async def descendants(session: AsyncSession, org_id: str) -> list[str]:
    """The organisations ``org_id`` made (a reseller's customers), and theirs."""
    found: list[str] = []
    frontier = [org_id]
    for _ in range(MAX_ORG_DEPTH):
        children = (
            await session.scalars(
                select(Organisation.id).where(Organisation.parent_id.in_(frontier))
            )
        ).all()
        frontier = [c for c in children if c not in found and c != org_id]
        if not frontier:
            break
        found.extend(frontier)
    return found


class InvoiceService(BillingService):
    # --- reading ------------------------------------------------------------------------
    async def visible(self, principal: Principal, invoice_id: str) -> Invoice:
        """The invoice if the caller may read it (billing.read in its organisation;
        a draft: platform admins only); else NotFound, as a missing one."""
        principal.require_scope(READ)
        invoice = await self.session.get(Invoice, invoice_id)
        missing = NotFound("Invoice not found", invoice_id=invoice_id)
        if invoice is None:
            raise missing
        try:
            await authorize_org(self.session, principal, invoice.organisation_id, READ)
        except NotFound:
            raise missing from None
        if invoice.status == "draft" and not principal.is_admin:
            raise missing
        return invoice

    async def _existing(self, invoice_id: str) -> Invoice:
        invoice = await self.session.get(Invoice, invoice_id, populate_existing=True)
        if invoice is None:
            await self.session.rollback()
            raise NotFound("Invoice not found", invoice_id=invoice_id)
        return invoice

    async def credited(self, rows: Sequence[Invoice]) -> dict[str, Decimal]:
        return await invoices.credited(
            self.session, [r.id for r in rows if r.kind == invoices.INVOICE]
        )

    async def list(
        self,
        principal: Principal,
        org: Organisation | None,
        page: PageParams,
        *,
        org_filter: str | None = None,
        include_children: bool = False,
        status: str | None = None,
        kind: str | None = None,
    ) -> tuple[Sequence[Invoice], int]:
        """The invoices of ``org``, already authorised (with ``include_children``, its
        customers' too), or with none every organisation's (platform admins; those of
        ``org_filter`` only if given); newest period first."""
        where: list[Any] = []
        if org is None:
            require_platform(principal)
            if org_filter is not None:
                where.append(Invoice.organisation_id == org_filter)
        else:
            ids = [org.id]
            if include_children:
                ids += await descendants(self.session, org.id)
            where.append(Invoice.organisation_id.in_(ids))
        if not principal.is_admin:
            where.append(Invoice.status != "draft")
        if status is not None:
            where.append(Invoice.status == status)
        if kind is not None:
            where.append(Invoice.kind == kind)
        return await fetch_page(
            self.session,
            Invoice,
            *where,
            order_by=(Invoice.period_start.desc(), Invoice.created_at.desc(), Invoice.id),
            page=page,
        )

    async def detail(self, invoice: Invoice) -> dict[str, Any]:
        lines = await invoices.lines_of(self.session, invoice.id)
        notes = (
            await self.session.scalars(
                select(Invoice.id)
                .where(Invoice.corrects_id == invoice.id)
                .order_by(Invoice.created_at, Invoice.id)
            )
        ).all()
        credited = (await self.credited([invoice])).get(invoice.id, ZERO)
        return {
            **invoice_public(invoice, credited),
            "lines": [line_public(ln, invoice.currency) for ln in lines],
            "credit_note_ids": list(notes),
        }

    async def html(self, invoice: Invoice) -> str:
        org = await self.session.get(Organisation, invoice.organisation_id)
        corrects = None
        if invoice.corrects_id is not None:
            original = await self.session.get(Invoice, invoice.corrects_id)
            corrects = original.number if original is not None else invoice.corrects_id
        return invoices.render_html(
            invoice,
            await invoices.lines_of(self.session, invoice.id),
            organisation=org.name if org is not None else invoice.organisation_id,
            corrects=corrects,
            credited_amount=(await self.credited([invoice])).get(invoice.id, ZERO),
        )

    async def history(
        self,
        org: Organisation,
        page: PageParams,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> tuple[Sequence[Invoice], int]:
        """Seed 004's billing history: the organisation's finalized invoices whose
        period meets [start, end) (aware UTC instants), newest first."""
        where: list[Any] = [
            Invoice.organisation_id == org.id,
            Invoice.kind == invoices.INVOICE,
            Invoice.status != "draft",
        ]
        if start is not None:
            where.append(Invoice.period_end > start)
        if end is not None:
            where.append(Invoice.period_start < end)
        return await fetch_page(
            self.session,
            Invoice,
            *where,
            order_by=(Invoice.period_start.desc(), Invoice.created_at.desc(), Invoice.id),
            page=page,
        )

    # --- platform admins' actions ----------------------------------------------------------
    async def _commit(self) -> None:
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("Another request changed this invoice meanwhile; try again") from exc

    async def create(self, body: InvoiceCreate) -> Invoice:
        """A draft for the organisation and period (default: the current period so
        far), made or made again."""
        settings = self.core.settings
        if body.period_start is not None and body.period_end is not None:
            start = _utc(body.period_start, "period_start")
            end = _utc(body.period_end, "period_end")
        else:
            start, end = invoices.period_bounds(utcnow(), settings.billing_invoice_period)
        await begin_write(self.session)
        org = await self.session.get(Organisation, body.organisation_id)
        if org is None:
            await self.session.rollback()
            raise NotFound("Organisation not found", organisation_id=body.organisation_id)
        try:
            account = await self.account(org.id)
            margin, _ = await self.margin_of(org)
            invoice = await invoices.generate(
                self.session, org, account.currency, start, end, margin, notes=body.notes
            )
        except (Conflict, ValidationFailed):
            await self.session.rollback()
            raise
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("Another request is making this invoice; try again") from exc
        await self._commit()
        return invoice

    async def finalize(self, invoice_id: str) -> Invoice:
        settings = self.core.settings
        await begin_write(self.session)
        invoice = await self._existing(invoice_id)
        try:
            invoice = await invoices.finalize(
                self.session,
                invoice,
                due_days=settings.billing_invoice_due_days,
                prefix=settings.billing_invoice_prefix,
            )
        except Conflict:
            await self.session.rollback()
            raise
        await self._commit()
        return invoice

    async def void(self, invoice_id: str) -> Invoice:
        await begin_write(self.session)
        invoice = await self._existing(invoice_id)
        try:
            invoice = await invoices.void(self.session, invoice)
        except Conflict:
            await self.session.rollback()
            raise
        await self._commit()
        return invoice

    async def credit_note(
        self, principal: Principal, invoice_id: str, body: CreditNoteCreate
    ) -> Invoice:
        await begin_write(self.session)
        invoice = await self._existing(invoice_id)
        try:
            wallet = await self.wallet(invoice.organisation_id, invoice.currency)
            note = await invoices.credit_note(
                self.session,
                invoice,
                reason=body.reason,
                amount=body.amount,
                lines=None
                if body.lines is None
                else [invoices.CreditLine(ln.line_id, ln.amount) for ln in body.lines],
                wallet=wallet,
                prefix=self.core.settings.billing_invoice_prefix,
                created_by=principal.user_id,
            )
        except (Conflict, ValidationFailed):
            await self.session.rollback()
            raise
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("Another request credited this invoice meanwhile; try again") from exc
        await self._commit()
        return note
