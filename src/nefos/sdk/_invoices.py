"""Invoices and credit notes, and seed 004's billing history.

Reading acts for one organisation (``organisation_id``, else your default project's);
making, finalizing, voiding and crediting invoices is for platform admins. Amounts
are ``Decimal``, ``str`` or ``int``, never ``float``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nefos.schemas.billing import BillingHistory, InvoiceDetail, InvoicePublic
from nefos.schemas.common import Page
from nefos.sdk._payments import Amount, money
from nefos.sdk._resources import _body, _idempotent, _paging, _Resource, _seg, _when

INVOICES = "/invoices"

#: A line to credit: its id (what is left of it), or (its id, an amount).
CreditLine = str | tuple[str, Amount]


def _line(line: CreditLine) -> dict[str, Any]:
    if isinstance(line, str):
        return {"line_id": line}
    line_id, amount = line
    return {"line_id": line_id, "amount": money(amount)}


class Invoices(_Resource):
    """An organisation's invoices: drafts (platform admins only), then finalized with
    a number and frozen, ``open`` until their usage is all charged, then ``paid``;
    corrected by credit notes, which refund the wallet."""

    def list(
        self,
        *,
        organisation_id: str | None = None,
        include_children: bool | None = None,
        all_organisations: bool | None = None,
        status: str | None = None,
        kind: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[InvoicePublic]:
        """Newest period first. ``include_children``: a reseller's customers' too;
        ``all_organisations``: every one's (platform admins). ``status``: draft, open,
        paid or void; ``kind``: invoice or credit_note."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            skip=skip,
            organisation_id=organisation_id,
            include_children=include_children,
            all=all_organisations,
            status=status,
            kind=kind,
        )
        return self._page(InvoicePublic, INVOICES, params)

    def get(self, invoice_id: str) -> InvoiceDetail:
        """An invoice or credit note with its lines."""
        return self._one(InvoiceDetail, "GET", f"{INVOICES}/{_seg(invoice_id)}")

    def html(self, invoice_id: str) -> str:
        """The printable HTML page of an invoice."""
        text: str = self._client.request("GET", f"{INVOICES}/{_seg(invoice_id)}/html", raw=True)
        return text

    def create(
        self,
        organisation_id: str,
        *,
        period_start: datetime | str | None = None,
        period_end: datetime | str | None = None,
        notes: str | None = None,
        idempotency_key: str | None = None,
    ) -> InvoiceDetail:
        """Platform admins: a draft for the period (UTC, end exclusive), or without one
        for the current period so far. A draft of the same period is made again."""
        body = _body(
            organisation_id=organisation_id,
            period_start=_when(period_start),
            period_end=_when(period_end),
            notes=notes,
        )
        return self._one(
            InvoiceDetail, "POST", INVOICES, json=body, headers=_idempotent(idempotency_key)
        )

    def finalize(self, invoice_id: str) -> InvoiceDetail:
        """Platform admins: number a draft whose period has ended and freeze it."""
        return self._one(InvoiceDetail, "POST", f"{INVOICES}/{_seg(invoice_id)}/finalize")

    def void(self, invoice_id: str) -> InvoiceDetail:
        """Platform admins: void a draft or open invoice."""
        return self._one(InvoiceDetail, "POST", f"{INVOICES}/{_seg(invoice_id)}/void")

    def credit_note(
        self,
        invoice_id: str,
        *,
        reason: str,
        amount: Amount | None = None,
        lines: Sequence[CreditLine] | None = None,
        idempotency_key: str | None = None,
    ) -> InvoiceDetail:
        """Platform admins: a credit note of ``amount``, or of ``lines`` (a line's id
        credits what is left of it; ``(id, amount)`` that much), refunded to the
        organisation's wallet. Never more than what is left to credit."""
        body = _body(
            reason=reason,
            amount=None if amount is None else money(amount),
            lines=None if lines is None else [_line(ln) for ln in lines],
        )
        return self._one(
            InvoiceDetail,
            "POST",
            f"{INVOICES}/{_seg(invoice_id)}/credit-notes",
            json=body,
            headers=_idempotent(idempotency_key),
        )

    def history(
        self,
        *,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> BillingHistory:
        """Seed 004's billing history: the finalized invoices ("bills") whose period
        meets [start_date, end_date), newest first."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            start_date=_when(start_date),
            end_date=_when(end_date),
            organisation_id=organisation_id,
        )
        return self._one(BillingHistory, "GET", "/billing/history", params=params)
