"""Invoices and credit notes (``/invoices``) and seed 004's ``GET /billing/history``.

Reading acts for one organisation: ``organisation_id`` (query) or
``X-Organisation-ID``, else the organisation of the caller's default project; a
reseller adds its customers' with ``include_children=true``, a platform admin sees
every organisation's with ``all=true``. Making, finalizing, voiding and crediting
invoices is for platform admins (the billing engine makes and finalizes each
finished period's on its own).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import HTMLResponse, Response

from nefos.api.deps import Access, CoreDep, ObjectId, OrgHint, PageDep, SessionDep, authorize
from nefos.billing.money import ZERO
from nefos.db.models import Invoice
from nefos.domain.access import Permission
from nefos.domain.errors import ValidationFailed
from nefos.gateway.envelope import listing, ok, page
from nefos.schemas.billing import (
    Bill,
    BillingHistory,
    CreditNoteCreate,
    InvoiceCreate,
    InvoiceDetail,
    InvoiceKind,
    InvoicePublic,
    InvoiceStatus,
)
from nefos.schemas.common import Envelope
from nefos.services.invoices import InvoiceService, bill_public, invoice_public
from nefos.services.payouts import bound

router = APIRouter(tags=["billing"])

READ = Permission.BILLING_READ
ADMIN = Permission.PLATFORM_ADMIN
InvoiceId = ObjectId

# A printable page of escaped values; it loads nothing and runs nothing.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


async def _detail(service: InvoiceService, invoice: Invoice) -> InvoiceDetail:
    return InvoiceDetail.model_validate(await service.detail(invoice))


@router.get("/invoices", response_model=Envelope[dict[str, Any]])
async def list_invoices(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    include_children: Annotated[
        bool, Query(description="Also the invoices of the organisations it made (a reseller).")
    ] = False,
    every: Annotated[
        bool,
        Query(
            alias="all",
            description="Every organisation's (platform admins; `organisation_id` then filters).",
        ),
    ] = False,
    status: InvoiceStatus | None = None,
    kind: InvoiceKind | None = None,
    access: Access = authorize(READ),
) -> Response:
    """Invoices and credit notes, newest period first (drafts: platform admins only)."""
    service = InvoiceService(core, session)
    rows, total = await service.list(
        access.principal,
        None if every else await access.org(organisation_id, READ),
        params,
        org_filter=organisation_id if every else None,
        include_children=include_children,
        status=status,
        kind=kind,
    )
    credited = await service.credited(rows)
    items = [
        InvoicePublic.model_validate(invoice_public(r, credited.get(r.id, ZERO))) for r in rows
    ]
    return listing(items, "invoices", total, params)


@router.post("/invoices", status_code=201, response_model=Envelope[InvoiceDetail])
async def create_invoice(
    body: InvoiceCreate, core: CoreDep, session: SessionDep, access: Access = authorize(ADMIN)
) -> Response:
    """A draft invoice of the organisation for `period_start`..`period_end` (UTC, end
    exclusive), or without them for the current period so far. A draft of the same
    period is made again (its lines replaced); a finalized or overlapping period is a
    409."""
    service = InvoiceService(core, session)
    invoice = await service.create(body)
    return ok(await _detail(service, invoice), 201)


@router.get("/invoices/{invoice_id}", response_model=Envelope[InvoiceDetail])
async def get_invoice(
    invoice_id: InvoiceId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    """An invoice or credit note with its lines."""
    service = InvoiceService(core, session)
    invoice = await service.visible(access.principal, invoice_id)
    return ok(await _detail(service, invoice))


@router.get(
    "/invoices/{invoice_id}/html",
    # Not response_class=HTMLResponse: the errors of this route are JSON envelopes,
    # and FastAPI would document them as text/html.
    responses={
        200: {
            "content": {"text/html": {"schema": {"type": "string"}}},
            "description": "A printable page.",
        }
    },
)
async def invoice_html(
    invoice_id: InvoiceId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    """The invoice as a printable HTML page (print it to PDF from a browser)."""
    service = InvoiceService(core, session)
    invoice = await service.visible(access.principal, invoice_id)
    return HTMLResponse(await service.html(invoice), headers=HTML_HEADERS)


@router.post("/invoices/{invoice_id}/finalize", response_model=Envelope[InvoiceDetail])
async def finalize_invoice(
    invoice_id: InvoiceId, core: CoreDep, session: SessionDep, access: Access = authorize(ADMIN)
) -> Response:
    """Number a draft whose period has ended and freeze it: `paid` if its usage is all
    charged to the wallet, else `open` (paid once it is). 409 if it is not a draft."""
    service = InvoiceService(core, session)
    invoice = await service.finalize(invoice_id)
    return ok(await _detail(service, invoice))


@router.post("/invoices/{invoice_id}/void", response_model=Envelope[InvoiceDetail])
async def void_invoice(
    invoice_id: InvoiceId, core: CoreDep, session: SessionDep, access: Access = authorize(ADMIN)
) -> Response:
    """Void a draft or open invoice (409 for a paid one: credit it instead)."""
    service = InvoiceService(core, session)
    invoice = await service.void(invoice_id)
    return ok(await _detail(service, invoice))


@router.post(
    "/invoices/{invoice_id}/credit-notes", status_code=201, response_model=Envelope[InvoiceDetail]
)
async def create_credit_note(
    invoice_id: InvoiceId,
    body: CreditNoteCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(ADMIN),
) -> Response:
    """Correct a finalized invoice: a credit note of `amount`, or of `lines` (each up to
    what is left of it), finalized at once and refunded to the organisation's wallet.
    Never more than what is left to credit (422)."""
    service = InvoiceService(core, session)
    note = await service.credit_note(access.principal, invoice_id, body)
    return ok(await _detail(service, note), 201)


@router.get("/billing/history", response_model=Envelope[BillingHistory])
async def billing_history(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    start_date: Annotated[
        date | datetime | None,
        Query(description="Bills whose period ends after this (a date alone: its midnight)."),
    ] = None,
    end_date: Annotated[
        date | datetime | None,
        Query(
            description="Bills whose period starts before this (a date alone: the end of that day)."
        ),
    ] = None,
    access: Access = authorize(READ),
) -> Response:
    """Seed 004: the organisation's bills (finalized invoices) whose period meets
    [start_date, end_date), newest first, amounts as decimal strings."""
    org = await access.org(organisation_id, READ)
    start, end = bound(start_date), bound(end_date, end=True)
    if start is not None and end is not None and start >= end:
        raise ValidationFailed("start_date must be before end_date", start_date=str(start_date))
    service = InvoiceService(core, session)
    rows, total = await service.history(org, params, start=start, end=end)
    credited = await service.credited(rows)
    bills = [Bill.model_validate(bill_public(r, credited.get(r.id, ZERO))) for r in rows]
    body = page(bills, total, params)
    body["bills"] = body["items"]
    return ok(body)
