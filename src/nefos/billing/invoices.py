"""Invoices: a period's rated usage as a statement, frozen once finalized.

Beside the usage, a consumer's invoice holds its marketplace lines: the priced API
calls and the plan fees and credits of the period (``marketlines``).

An invoice covers one organisation, currency and period (``billing_invoice_period``,
UTC). It is made as a ``draft`` whose lines are the period's usage rated with the
prices in force when it happened (``rating``): one line per resource and meter (a
price change inside the period splits a line), each amount rounded half-up to the
currency's minor unit once, the total their sum. A draft may be generated again
(its lines are replaced). ``finalize`` gives it a number from a gap-free series
(``NEF-2026-000123``) and a due date; from then on nothing in it changes, which
triggers in the database enforce as well (migration 0007): corrections are credit
notes, finalized at once, which refund the wallet.

Wallets are prepaid and charged hourly by the billing engine, so an invoice is a
statement of what was charged: a finalized invoice is ``paid`` once every usage
record of its period has been charged (``settle_open``), ``open`` until then.

``period_key`` (organisation, currency, period start) is unique: two processes
making the same invoice at once make it once (``run_due``).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any, Literal, cast

from sqlalchemy import Table, delete, exists, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import catalogue, ledger, marketlines, rating
from nefos.billing.accounts import BillingParts
from nefos.billing.ledger import _insert
from nefos.billing.money import ZERO, check_currency, exact, money_str, parse_amount
from nefos.billing.periods import period_bounds
from nefos.billing.rating import RatedLine, Totals
from nefos.db.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    Organisation,
    UsageRecord,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.db.types import new_id, utcnow
from nefos.domain.access import OrgKind
from nefos.domain.errors import Conflict, ValidationFailed
from nefos.events import EventType, make, record

log = logging.getLogger(__name__)

Period = Literal["month", "week", "day"]
PERIODS: tuple[Period, ...] = ("month", "week", "day")
INVOICE = "invoice"
CREDIT_NOTE = "credit_note"
STATUSES = ("draft", "open", "paid", "void")
# The longest period an invoice may cover (an admin's draft of any span).
MAX_PERIOD = timedelta(days=366)
# Completed periods ``run_due`` looks back over: a process down over a period's end
# still invoices it when it comes back.
CATCH_UP_PERIODS = 3
# How long after its end a period is invoiced: its last hour's network usage is
# recorded a few minutes after the hour (``engine.NETWORK_DELAY``), and the usage
# must be all there before the invoice is frozen.
SETTLE = timedelta(minutes=15)
# Organisations named in one lookup's ``IN`` list.
_IN_LIMIT = 500
# PostgreSQL's memory for one batch rating's aggregate (ten thousand resources take
# about 10 MB).
RATING_WORK_MEM = "64MB"
# Organisations a rating aggregate names in its ``WHERE`` (an index path for each).
# For more, it rates every organisation's usage of the period and drops the others
# in Python: comparing each of millions of records with a long list costs more.
_RATE_FILTER_LIMIT = 10
LINES = cast(Table, InvoiceLine.__table__)


# --- periods -------------------------------------------------------------------------
def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime: billing periods are in UTC")
    return at.astimezone(UTC)


def previous_period(start: datetime, period: Period) -> tuple[datetime, datetime]:
    """The period just before the one starting at ``start``."""
    return period_bounds(_utc(start) - timedelta(microseconds=1), period)


def check_period(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``start`` and ``end`` in UTC, or ValidationFailed."""
    try:
        start, end = _utc(start), _utc(end)
    except (ValueError, OverflowError):
        raise ValidationFailed(
            "period_start and period_end need a time zone (UTC)",
            period_start=str(start),
            period_end=str(end),
        ) from None
    if start >= end:
        raise ValidationFailed(
            "period_end must be after period_start",
            period_start=start.isoformat(),
            period_end=end.isoformat(),
        )
    if end - start > MAX_PERIOD:
        raise ValidationFailed(
            f"An invoice covers at most {MAX_PERIOD.days} days",
            period_start=start.isoformat(),
            period_end=end.isoformat(),
        )
    return start, end


def period_key(org_id: str, currency: str, start: datetime) -> str:
    return f"{org_id}:{currency}:{_utc(start):%Y-%m-%dT%H:%M:%SZ}"


def period_label(start: datetime, end: datetime) -> str:
    """``2025-01-01 to 2025-01-31``: the days an invoice covers (its end is exclusive)."""
    last = _utc(end) - timedelta(microseconds=1)
    return f"{_utc(start):%Y-%m-%d} to {last:%Y-%m-%d}"


# --- rating into lines ---------------------------------------------------------------
async def reseller_margins(session: AsyncSession, org_ids: Collection[str]) -> dict[str, Decimal]:
    """The margin (percent) each organisation's parent reseller puts on its prices;
    organisations with none are left out."""
    child, parent = Organisation.__table__.alias("child"), Organisation.__table__.alias("parent")
    out: dict[str, Decimal] = {}
    ids = sorted(org_ids)
    for i in range(0, len(ids), _IN_LIMIT):
        rows = await session.execute(
            select(child.c.id, BillingAccount.margin_percent)
            .join(parent, parent.c.id == child.c.parent_id)
            .join(BillingAccount, BillingAccount.organisation_id == parent.c.id)
            .where(child.c.id.in_(ids[i : i + _IN_LIMIT]), parent.c.kind == OrgKind.RESELLER)
        )
        out.update({org_id: margin for org_id, margin in rows.all() if margin})
    return out


async def rate_organisations(
    session: AsyncSession,
    book: catalogue.PriceBook,
    start: datetime,
    end: datetime,
    margins: Mapping[str, Decimal],
    *,
    only: Collection[str] | None = None,
) -> dict[str, list[RatedLine]]:
    """The lines of every organisation (or those in ``only``) for the usage started in
    [start, end), per span of constant prices: what ``rating.rate_span`` makes for
    each organisation alone.

    PostgreSQL hashes the sums of every resource in one aggregate over the period
    (naming the organisations only when they are few). SQLite groups by sorting,
    and sorting a month of every organisation at once costs more than each
    organisation's slice of ``ix_usage_records_org_started`` in turn, so there it
    is ``rating.rate_span`` for each organisation."""
    r = UsageRecord
    wanted = set(only) if only is not None else None
    found: dict[str, list[RatedLine]] = {}
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite" and wanted is not None:
        for org_id in sorted(wanted):
            lines = await rating.rate_span(
                session, book, start, end, r.organisation_id == org_id,
                margin_percent=margins.get(org_id, ZERO),
            )  # fmt: skip
            if lines:
                found[org_id] = lines
        return found
    if dialect == "postgresql":
        # For this transaction: the resources' sums fit in memory (a hash, not a
        # sort of the month spilled to disk), and a query run once a period is not
        # worth seconds of JIT compilation.
        await session.execute(text(f"SET LOCAL work_mem = '{RATING_WORK_MEM}'"))
        await session.execute(text("SET LOCAL jit = off"))
    for lo, hi in pairwise([start, *book.changes(start, end), end]):
        query = (
            select(
                r.organisation_id,
                r.resource_kind,
                r.resource_id,
                func.max(r.resource_name),
                func.max(r.flavor),
            )
            .add_columns(*rating.totals_columns())
            .where(r.started_at >= lo, r.started_at < hi)
            .group_by(r.organisation_id, r.resource_kind, r.resource_id)
        )
        if wanted is not None and len(wanted) <= _RATE_FILTER_LIMIT:
            query = query.where(r.organisation_id.in_(sorted(wanted)))
        for org_id, kind, resource_id, name, flavor, *sums in (await session.execute(query)).all():
            if wanted is not None and org_id not in wanted:
                continue
            totals = Totals(kind, resource_id, name or "", flavor, *(int(v or 0) for v in sums))
            found.setdefault(org_id, []).extend(
                rating.rate(totals, book, lo, margins.get(org_id, ZERO))
            )
    return {org_id: rating.merge(lines) for org_id, lines in found.items()}


def _line_row(invoice_id: str, position: int, ln: RatedLine) -> dict[str, Any]:
    return {
        "id": new_id(),
        "invoice_id": invoice_id,
        "position": position,
        "resource_kind": ln.resource_kind,
        "resource_id": ln.resource_id,
        "resource_name": ln.resource_name[:63],
        "meter": ln.meter,
        "sku": ln.sku,
        "description": ln.description or catalogue.describe(ln.sku).name,
        "quantity": exact(ln.quantity),
        "unit": ln.unit,
        "unit_price": exact(ln.unit_price),
        "amount": ln.amount,
        "corrects_line_id": None,
    }


async def _locked(session: AsyncSession, invoice_id: str) -> Invoice | None:
    """The invoice as the database holds it now, row-locked on PostgreSQL (the
    caller's write transaction orders writers on SQLite)."""
    return await session.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)


async def _overlapping(
    session: AsyncSession,
    org_id: str,
    currency: str,
    start: datetime,
    end: datetime,
    *,
    besides: str | None = None,
) -> Invoice | None:
    """A finalized invoice (void or not) of the organisation overlapping [start, end)."""
    query = select(Invoice).where(
        Invoice.organisation_id == org_id,
        Invoice.currency == currency,
        Invoice.kind == INVOICE,
        Invoice.status != "draft",
        Invoice.period_start < end,
        Invoice.period_end > start,
    )
    if besides is not None:
        query = query.where(Invoice.id != besides)
    return await session.scalar(query.limit(1))


async def write_draft(
    session: AsyncSession,
    org_id: str,
    currency: str,
    start: datetime,
    end: datetime,
    lines: Sequence[RatedLine],
    *,
    notes: str | None = None,
) -> Invoice:
    """The draft invoice of ``org_id`` for [start, end) with ``lines``: made, or (if a
    draft of that period exists) its lines replaced. Conflict if the period is
    already finalized, or overlaps a finalized invoice. The caller holds a write
    transaction and commits; on PostgreSQL a concurrent draft of the same period
    raises IntegrityError (roll back: the other one stands)."""
    start, end = check_period(start, end)
    currency = check_currency(currency)
    key = period_key(org_id, currency, start)
    invoice = await session.scalar(
        select(Invoice)
        .where(Invoice.period_key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if invoice is not None:
        if invoice.status != "draft":
            raise Conflict(
                "This period is already invoiced", invoice_id=invoice.id, status=invoice.status
            )
        if invoice.period_end != end:
            raise Conflict(
                "A draft of another span starts at this time; void it first",
                invoice_id=invoice.id,
                period_end=invoice.period_end.isoformat(),
            )
        await session.execute(delete(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id))
    else:
        other = await _overlapping(session, org_id, currency, start, end)
        if other is not None:
            raise Conflict(
                "The period overlaps an invoice of the organisation",
                invoice_id=other.id,
                period_start=other.period_start.isoformat(),
                period_end=other.period_end.isoformat(),
            )
        invoice = Invoice(
            organisation_id=org_id,
            kind=INVOICE,
            currency=currency,
            period_start=start,
            period_end=end,
            status="draft",
            period_key=key,
            notes=notes or "",
        )
        session.add(invoice)
        await session.flush()
    rows = [_line_row(invoice.id, i, ln) for i, ln in enumerate(lines)]
    if rows:  # a Core executemany: the ORM's bulk path costs more than the insert
        await session.execute(insert(LINES), rows)
    total = sum((row["amount"] for row in rows), ZERO)
    invoice.subtotal = total
    invoice.total = total
    if notes is not None:
        invoice.notes = notes
    await session.flush()
    return invoice


async def generate(
    session: AsyncSession,
    org: Organisation,
    currency: str,
    start: datetime,
    end: datetime,
    margin_percent: Decimal = ZERO,
    *,
    notes: str | None = None,
) -> Invoice:
    """The organisation's draft invoice for the usage started in [start, end), rated
    with ``currency``'s catalogue and the reseller's ``margin_percent``. The caller
    holds a write transaction and commits (see ``write_draft``)."""
    start, end = check_period(start, end)
    currency = check_currency(currency)
    book = await catalogue.price_book(session, currency, start, end)
    lines = await rating.rate_span(
        session,
        book,
        start,
        end,
        UsageRecord.organisation_id == org.id,
        margin_percent=margin_percent,
    )
    market = await marketlines.lines(session, [org.id], currency, start, end)
    lines += market.get(org.id, [])
    return await write_draft(session, org.id, currency, start, end, lines, notes=notes)


async def lines_of(session: AsyncSession, invoice_id: str) -> Sequence[InvoiceLine]:
    return (
        await session.scalars(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice_id)
            .order_by(InvoiceLine.position, InvoiceLine.id)
        )
    ).all()


# --- finalizing, paying, voiding -----------------------------------------------------
def announce(session: AsyncSession, invoice: Invoice, kind: str) -> None:
    """A ``billing_update`` event (``invoice_finalized``, ``invoice_paid``,
    ``invoice_void``, ``credit_note``), published when the transaction commits."""
    record(
        session,
        make(
            EventType.BILLING,
            {
                "organisation_id": invoice.organisation_id,
                "kind": kind,
                "invoice_id": invoice.id,
                "invoice_kind": invoice.kind,
                "number": invoice.number,
                "status": invoice.status,
                "total": money_str(invoice.total, invoice.currency),
                "currency": invoice.currency,
                "period_start": invoice.period_start.isoformat(),
                "period_end": invoice.period_end.isoformat(),
                "due_at": invoice.due_at.isoformat() if invoice.due_at else None,
            },
            organisation_id=invoice.organisation_id,
        ),
    )


async def next_number(session: AsyncSession, series: str) -> str:
    """The next number of ``series`` (``NEF-2026`` gives ``NEF-2026-000001``, ...),
    taken in the caller's transaction."""

    async def bump() -> int | None:
        return await session.scalar(
            update(InvoiceSequence)
            .where(InvoiceSequence.name == series)
            .values(last=InvoiceSequence.last + 1)
            .returning(InvoiceSequence.last)
            .execution_options(synchronize_session=False)
        )

    n = await bump()
    if n is None:
        await session.execute(
            _insert(session, InvoiceSequence).values(name=series, last=0).on_conflict_do_nothing()
        )
        n = await bump()
    assert n is not None
    return f"{series}-{n:06d}"


async def all_charged(session: AsyncSession, org_id: str, start: datetime, end: datetime) -> bool:
    """Whether every usage record the organisation started in [start, end), and every
    priced API call it made then, is charged."""
    # An organisation has few uncharged records and many in a period: the range is
    # written so that no index takes it (SQLite would walk the period's records in
    # ix_usage_records_org_started), and the partial index of the uncharged does.
    started = func.coalesce(UsageRecord.started_at, UsageRecord.started_at)
    uncharged = await session.scalar(
        select(UsageRecord.id)
        .where(
            UsageRecord.organisation_id == org_id,
            UsageRecord.charge_id.is_(None),
            started >= start,
            started < end,
        )
        .limit(1)
    )
    return uncharged is None and await marketlines.calls_charged(session, org_id, start, end)


async def finalize(
    session: AsyncSession,
    invoice: Invoice,
    *,
    due_days: int = 14,
    prefix: str = "NEF",
    now: datetime | None = None,
) -> Invoice:
    """Number a draft invoice and freeze it: ``paid`` if its usage is all charged (or
    it comes to nothing), else ``open``. Conflict unless it is a draft whose period
    has ended. The caller holds a write transaction and commits."""
    now = now or utcnow()
    current = await _locked(session, invoice.id)
    if current is None or current.status != "draft":
        raise Conflict(
            "Only a draft invoice can be finalized",
            invoice_id=invoice.id,
            status=current.status if current else None,
        )
    if current.kind == INVOICE:
        if now < current.period_end:
            raise Conflict(
                "The invoice's period has not ended yet",
                invoice_id=current.id,
                period_end=current.period_end.isoformat(),
            )
        other = await _overlapping(
            session,
            current.organisation_id,
            current.currency,
            current.period_start,
            current.period_end,
            besides=current.id,
        )
        if other is not None:
            raise Conflict(
                "The period overlaps a finalized invoice of the organisation",
                invoice_id=other.id,
            )
    series = f"{prefix}-{now:%Y}" if current.kind == INVOICE else f"{prefix}-CN-{now:%Y}"
    current.number = await next_number(session, series)
    current.finalized_at = now
    current.due_at = now + timedelta(days=due_days)
    settled = current.total <= 0 or await all_charged(
        session, current.organisation_id, current.period_start, current.period_end
    )
    current.status = "paid" if settled else "open"
    current.paid_at = now if settled else None
    await session.flush()
    announce(session, current, "invoice_finalized")
    return current


async def settle_open(session: AsyncSession, org_id: str, *, now: datetime | None = None) -> int:
    """Mark paid the organisation's open invoices whose usage is now all charged; how
    many. The caller commits (the billing engine calls it after charging)."""
    now = now or utcnow()
    open_invoices = (
        await session.scalars(
            select(Invoice).where(
                Invoice.organisation_id == org_id,
                Invoice.kind == INVOICE,
                Invoice.status == "open",
            )
        )
    ).all()
    settled = 0
    for invoice in open_invoices:
        if not await all_charged(session, org_id, invoice.period_start, invoice.period_end):
            continue
        paid = await session.execute(
            update(Invoice)
            .where(Invoice.id == invoice.id, Invoice.status == "open")
            .values(status="paid", paid_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if paid.rowcount:  # type: ignore[attr-defined]
            settled += 1
            await session.refresh(invoice)
            announce(session, invoice, "invoice_paid")
    return settled


async def void(session: AsyncSession, invoice: Invoice, *, now: datetime | None = None) -> Invoice:
    """Void a draft or open invoice (its period stays invoiced: a void invoice is not
    made again). A paid one is corrected with a credit note instead: Conflict. The
    caller holds a write transaction and commits."""
    current = await _locked(session, invoice.id)
    if current is None or current.kind != INVOICE or current.status not in ("draft", "open"):
        raise Conflict(
            "Only a draft or open invoice can be voided; correct a paid one with a credit note",
            invoice_id=invoice.id,
            status=current.status if current else None,
        )
    current.status = "void"
    current.voided_at = now or utcnow()
    await session.flush()
    announce(session, current, "invoice_void")
    return current


# --- credit notes ----------------------------------------------------------------------
@dataclass(frozen=True)
class CreditLine:
    """A credit against one line of an invoice; ``amount`` None credits what is left."""

    line_id: str
    amount: Decimal | str | None = None


async def credited(session: AsyncSession, invoice_ids: Collection[str]) -> dict[str, Decimal]:
    """What credit notes have given back on each invoice (a positive amount)."""
    if not invoice_ids:
        return {}
    rows = await session.execute(
        select(Invoice.corrects_id, func.sum(Invoice.total))
        .where(Invoice.corrects_id.in_(sorted(invoice_ids)), Invoice.kind == CREDIT_NOTE)
        .group_by(Invoice.corrects_id)
    )
    return {invoice_id: -Decimal(total) for invoice_id, total in rows.all() if invoice_id}


async def credit_note(
    session: AsyncSession,
    invoice: Invoice,
    *,
    reason: str,
    amount: Decimal | str | None = None,
    lines: Sequence[CreditLine] | None = None,
    wallet: Wallet | None = None,
    prefix: str = "NEF",
    created_by: str | None = None,
    now: datetime | None = None,
) -> Invoice:
    """A credit note correcting a finalized ``invoice``: of ``amount``, or of the given
    ``lines`` (each up to what is left of it). It is finalized at once (numbered in
    the credit notes' series), its total negative, and refunds the organisation's
    wallet in the invoice's currency (a ``refund`` entry, key ``credit-note:<id>``).
    Never more than what is left to credit on the invoice. The caller holds a write
    transaction and commits."""
    now = now or utcnow()
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("A credit note needs a reason", reason="required")
    if (amount is None) == (lines is None):
        raise ValidationFailed(
            "Give either an amount or lines to credit", amount=str(amount), lines="either"
        )
    original = await _locked(session, invoice.id)
    if original is None or original.kind != INVOICE or original.status not in ("open", "paid"):
        raise Conflict(
            "Only a finalized (open or paid) invoice can be credited",
            invoice_id=invoice.id,
            status=original.status if original else None,
        )
    currency = original.currency
    left = original.total - (await credited(session, [original.id])).get(original.id, ZERO)
    rows: list[dict[str, Any]] = []
    if amount is not None:
        value = parse_amount(amount, currency)
        rows.append(
            {
                "meter": "credit",
                "sku": None,
                "resource_kind": None,
                "resource_id": None,
                "resource_name": "",
                "description": reason,
                "amount": value,
                "corrects_line_id": None,
            }
        )
    else:
        rows = await _credit_lines(session, original, lines or [])
    total = sum((row["amount"] for row in rows), ZERO)
    if total > left:
        raise ValidationFailed(
            "A credit note cannot exceed what is left to credit on the invoice",
            amount=money_str(total, currency),
            creditable=money_str(left, currency),
            currency=currency,
        )
    note = Invoice(
        organisation_id=original.organisation_id,
        kind=CREDIT_NOTE,
        corrects_id=original.id,
        currency=currency,
        period_start=original.period_start,
        period_end=original.period_end,
        status="draft",
        subtotal=-total,
        total=-total,
        notes=reason,
    )
    session.add(note)
    await session.flush()
    await session.execute(
        insert(LINES),
        [
            {
                "id": new_id(),
                "invoice_id": note.id,
                "position": i,
                "quantity": Decimal(1),
                "unit": "credit",
                **row,
                "unit_price": -row["amount"],
                "amount": -row["amount"],
            }
            for i, row in enumerate(rows)
        ],
    )
    note.number = await next_number(session, f"{prefix}-CN-{now:%Y}")
    note.status = "paid"
    note.finalized_at = now
    note.due_at = now
    note.paid_at = now
    await session.flush()
    target = wallet or await ledger.wallet(session, original.organisation_id, currency)
    await ledger.post(
        session,
        target,
        "refund",
        total,
        key=f"credit-note:{note.id}",
        description=f"Credit note {note.number} for invoice {original.number}: {reason}"[:2000],
        reference=("invoice", note.id),
        created_by=created_by,
    )
    announce(session, note, "credit_note")
    return note


async def _credit_lines(
    session: AsyncSession, original: Invoice, wanted: Sequence[CreditLine]
) -> list[dict[str, Any]]:
    if not wanted:
        raise ValidationFailed("Name at least one line to credit", lines="empty")
    ids = [w.line_id for w in wanted]
    if len(set(ids)) != len(ids):
        raise ValidationFailed("A line is named twice", lines="duplicate line_id")
    own = {ln.id: ln for ln in await lines_of(session, original.id)}
    done: dict[str, Decimal] = {}
    if own:
        rows = await session.execute(
            select(InvoiceLine.corrects_line_id, func.sum(InvoiceLine.amount))
            .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
            .where(Invoice.corrects_id == original.id, InvoiceLine.corrects_line_id.is_not(None))
            .group_by(InvoiceLine.corrects_line_id)
        )
        done = {line_id: -Decimal(s) for line_id, s in rows.all() if line_id}
    out = []
    for w in wanted:
        line = own.get(w.line_id)
        if line is None:
            raise ValidationFailed("No such line on the invoice", line_id=w.line_id)
        left = line.amount - done.get(line.id, ZERO)
        value = left if w.amount is None else parse_amount(w.amount, original.currency)
        if value <= 0 or value > left:
            raise ValidationFailed(
                "A line's credit must be positive and at most what is left of the line",
                line_id=line.id,
                amount=money_str(value, original.currency),
                creditable=money_str(left, original.currency),
            )
        out.append(
            {
                "meter": line.meter,
                "sku": line.sku,
                "resource_kind": line.resource_kind,
                "resource_id": line.resource_id,
                "resource_name": line.resource_name,
                "description": f"Credit: {line.description}",
                "amount": value,
                "corrects_line_id": line.id,
            }
        )
    return out


# --- the billing engine's pass ---------------------------------------------------------
async def uninvoiced(session: AsyncSession, start: datetime, end: datetime) -> list[str]:
    """Organisations with usage started in [start, end), or marketplace calls or plan
    charges then, and no finalized (or void) invoice overlapping it: two index probes
    per organisation."""
    u, i, o = UsageRecord, Invoice, Organisation
    used = exists().where(u.organisation_id == o.id, u.started_at >= start, u.started_at < end)
    invoiced = exists().where(
        i.organisation_id == o.id,
        i.kind == INVOICE,
        i.status != "draft",
        i.period_start < end,
        i.period_end > start,
    )
    found = set((await session.scalars(select(o.id).where(used, ~invoiced))).all())
    market = sorted(await marketlines.active_orgs(session, start, end) - found)
    for k in range(0, len(market), _IN_LIMIT):
        chunk = market[k : k + _IN_LIMIT]
        found.update((await session.scalars(select(o.id).where(o.id.in_(chunk), ~invoiced))).all())
    return sorted(found)


async def invoice_period(
    core: BillingParts, start: datetime, end: datetime, *, now: datetime | None = None
) -> list[str]:
    """Make and finalize the invoices of [start, end) that do not exist yet; the ids
    made. Usage is rated for all the organisations at once (a read), then each
    invoice is written in a short write transaction of its own; one another process
    made meanwhile is left to it."""
    settings = core.settings
    async with core.db.sessionmaker() as session:
        due = await uninvoiced(session, start, end)
        if not due:
            return []
        accounts = select(BillingAccount.organisation_id, BillingAccount.currency)
        if len(due) <= _IN_LIMIT:
            accounts = accounts.where(BillingAccount.organisation_id.in_(due))
        currencies = {org_id: cur for org_id, cur in (await session.execute(accounts)).all()}
        margins = await reseller_margins(session, due)
        by_currency: dict[str, list[str]] = {}
        for org_id in due:
            by_currency.setdefault(currencies.get(org_id, settings.billing_currency), []).append(
                org_id
            )
        rated: dict[str, list[RatedLine]] = {}
        for currency, orgs in by_currency.items():
            book = await catalogue.price_book(session, currency, start, end)
            rated.update(await rate_organisations(session, book, start, end, margins, only=orgs))
            market = await marketlines.lines(session, orgs, currency, start, end)
            for org_id, extra in market.items():
                rated[org_id] = [*rated.get(org_id, []), *extra]
    made = []
    for currency, orgs in by_currency.items():
        for org_id in orgs:
            invoice_id = await _write_and_finalize(
                core, org_id, currency, start, end, rated.get(org_id, []), now=now
            )
            if invoice_id is not None:
                made.append(invoice_id)
    return made


async def _write_and_finalize(
    core: BillingParts,
    org_id: str,
    currency: str,
    start: datetime,
    end: datetime,
    lines: Sequence[RatedLine],
    *,
    now: datetime | None,
) -> str | None:
    settings = core.settings
    async with core.db.sessionmaker() as session:
        try:
            await begin_write(session)
            invoice = await write_draft(session, org_id, currency, start, end, lines)
            invoice = await finalize(
                session,
                invoice,
                due_days=settings.billing_invoice_due_days,
                prefix=settings.billing_invoice_prefix,
                now=now,
            )
            await session.commit()
            return invoice.id
        except Conflict as exc:  # made (or overlapped) meanwhile
            await session.rollback()
            log.debug("invoice of %s for %s: %s", org_id, start, exc.message)
        except IntegrityError:  # another process is making it right now
            await session.rollback()
    return None


async def settle_all(core: BillingParts, *, now: datetime | None = None) -> int:
    """``settle_open`` for every organisation with an open invoice; how many were
    marked paid."""
    async with core.db.sessionmaker() as session:
        org_ids = (
            await session.scalars(
                select(Invoice.organisation_id)
                .where(Invoice.kind == INVOICE, Invoice.status == "open")
                .distinct()
            )
        ).all()
    settled = 0
    for org_id in org_ids:
        async with core.db.sessionmaker() as session:
            await begin_write(session)
            settled += await settle_open(session, org_id, now=now)
            await session.commit()
    return settled


async def run_due(core: BillingParts, now: datetime | None = None) -> list[str]:
    """Invoice every organisation's usage in the completed periods (the last
    ``CATCH_UP_PERIODS``, each from ``SETTLE`` after its end) that has no invoice
    yet: made and finalized; then mark paid the open invoices whose usage has all
    been charged since. The billing engine calls it on each pass, after charging.
    Idempotent, and safe in several processes at once (``period_key``); the ids
    of the invoices made."""
    now = now or utcnow()
    period = core.settings.billing_invoice_period
    end, _ = period_bounds(now - SETTLE, period)
    made: list[str] = []
    for _ in range(CATCH_UP_PERIODS):
        start, _ = previous_period(end, period)
        made += await invoice_period(core, start, end, now=now)
        end = start
    await settle_all(core, now=now)
    return made


# --- rendering ------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;
margin:0;background:#f3f4f6}
main{max-width:900px;margin:24px auto;background:#fff;padding:40px 48px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
header{display:flex;justify-content:space-between;align-items:flex-start;margin-bottom:32px}
h1{font-size:26px;margin:0 0 4px}
.muted{color:#6b7280}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;
text-transform:uppercase;letter-spacing:.05em;border:1px solid currentColor}
.paid{color:#047857}.open{color:#b45309}.void{color:#6b7280}.draft{color:#1d4ed8}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0 0 28px}
dt{color:#6b7280}dd{margin:0}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:7px 8px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#6b7280}
.num{text-align:right;white-space:nowrap}
tfoot td{border-bottom:none;font-weight:600}
tfoot tr.total td{font-size:16px;border-top:2px solid #1d2330}
.notes{margin-top:28px;white-space:pre-wrap}
@media print{body{background:#fff}main{box-shadow:none;margin:0;max-width:none;padding:0}
@page{margin:18mm}tr{page-break-inside:avoid}}
"""


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():f}"


def render_html(
    invoice: Invoice,
    lines: Sequence[InvoiceLine],
    *,
    organisation: str,
    corrects: str | None = None,
    credited_amount: Decimal = ZERO,
    issuer: str = "Nefos",
) -> str:
    """The invoice as a printable HTML page. Every value from the database is
    escaped."""

    def e(value: object) -> str:
        return html.escape("" if value is None else str(value), quote=True)

    def day(at: datetime | None) -> str:
        return "-" if at is None else f"{_utc(at):%Y-%m-%d}"

    cur = invoice.currency
    title = "Credit note" if invoice.kind == CREDIT_NOTE else "Invoice"
    number = invoice.number or "DRAFT"
    facts = [
        ("Organisation", organisation),
        ("Organisation id", invoice.organisation_id),
        ("Period", period_label(invoice.period_start, invoice.period_end)),
        ("Issued", day(invoice.finalized_at)),
    ]
    if invoice.kind == INVOICE:
        facts.append(("Due", day(invoice.due_at)))
    if invoice.paid_at is not None:
        facts.append(("Paid" if invoice.kind == INVOICE else "Refunded", day(invoice.paid_at)))
    if invoice.voided_at is not None:
        facts.append(("Voided", day(invoice.voided_at)))
    if corrects is not None:
        facts.append(("Corrects invoice", corrects))
    facts.append(("Currency", cur))
    body_rows = []
    for ln in lines:
        resource = ln.resource_name or ln.resource_id or ""
        if ln.resource_kind:
            resource = f"{resource} ({ln.resource_kind})"
        body_rows.append(
            "<tr>"
            f"<td>{e(resource)}</td>"
            f"<td>{e(ln.description)}</td>"
            f'<td class="num">{e(_quantity(ln.quantity))}</td>'
            f"<td>{e(ln.unit)}</td>"
            f'<td class="num">{e(money_str(ln.unit_price, cur))}</td>'
            f'<td class="num">{e(money_str(ln.amount, cur))}</td>'
            "</tr>"
        )
    if not body_rows:
        body_rows.append('<tr><td colspan="6" class="muted">No billable usage.</td></tr>')
    foot = [
        f'<tr><td colspan="5" class="num">Subtotal</td>'
        f'<td class="num">{e(money_str(invoice.subtotal, cur))} {e(cur)}</td></tr>',
        f'<tr class="total"><td colspan="5" class="num">Total</td>'
        f'<td class="num">{e(money_str(invoice.total, cur))} {e(cur)}</td></tr>',
    ]
    if credited_amount:
        foot.append(
            f'<tr><td colspan="5" class="num">Credited</td>'
            f'<td class="num">-{e(money_str(credited_amount, cur))} {e(cur)}</td></tr>'
        )
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
    notes = f'<p class="notes">{e(invoice.notes)}</p>' if invoice.notes else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} {e(number)}</title><style>{_CSS}</style></head>"
        "<body><main>"
        f"<header><div><h1>{e(title)} {e(number)}</h1>"
        f'<div class="muted">{e(issuer)}</div></div>'
        f'<span class="badge {e(invoice.status)}">{e(invoice.status)}</span></header>'
        f"<dl>{dl}</dl>"
        "<table><thead><tr><th>Resource</th><th>Description</th>"
        '<th class="num">Quantity</th><th>Unit</th><th class="num">Unit price</th>'
        '<th class="num">Amount</th></tr></thead>'
        f"<tbody>{''.join(body_rows)}</tbody><tfoot>{''.join(foot)}</tfoot></table>"
        f"{notes}</main></body></html>\n"
    )


__all__ = [
    "CREDIT_NOTE",
    "INVOICE",
    "PERIODS",
    "CreditLine",
    "all_charged",
    "credit_note",
    "credited",
    "finalize",
    "generate",
    "invoice_period",
    "lines_of",
    "period_bounds",
    "period_key",
    "period_label",
    "previous_period",
    "rate_organisations",
    "render_html",
    "reseller_margins",
    "run_due",
    "settle_all",
    "settle_open",
    "uninvoiced",
    "void",
    "write_draft",
]
