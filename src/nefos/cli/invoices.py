"""`nefos invoice ...`: invoices and credit notes, and the billing history."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    YesOpt,
    api,
    echo_json,
    fail,
    listing,
    stdout,
)
from nefos.cli.wallet import OrgOpt
from nefos.schemas.billing import InvoiceDetail

app = typer.Typer(
    no_args_is_help=True,
    help="Invoices: a period's usage, finalized and frozen; credit notes correct them.",
)

InvoiceArg = Annotated[str, typer.Argument(help="Invoice id.", show_default=False)]

INVOICE_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NUMBER", "number"),
    ("KIND", "kind"),
    ("PERIOD", "period"),
    ("STATUS", "status"),
    ("TOTAL", lambda i: f"{i.total} {i.currency}"),
    ("DUE", "due_at"),
]
BILL_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NUMBER", "number"),
    ("PERIOD", "period"),
    ("AMOUNT", lambda b: f"{b.amount} {b.currency}"),
    ("STATUS", "status"),
    ("DUE", "due_date"),
    ("PAID", "paid_date"),
]


def _fact(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def print_invoice(inv: InvoiceDetail, as_json: bool) -> None:
    """An invoice: its facts, then its lines as a table and the totals."""
    if as_json:
        echo_json(inv)
        return
    out = stdout()
    title = "Credit note" if inv.kind == "credit_note" else "Invoice"
    out.print(f"[bold]{title} {escape(inv.number or 'DRAFT')}[/] ({escape(inv.status)})")
    facts = Table(show_header=False, box=None, pad_edge=False)
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    rows: list[tuple[str, object]] = [
        ("id", inv.id),
        ("organisation", inv.organisation_id),
        ("period", inv.period),
        ("finalized", inv.finalized_at),
        ("due", inv.due_at),
        ("paid", inv.paid_at),
        ("voided", inv.voided_at),
        ("corrects", inv.corrects_id),
        ("credit notes", inv.credit_note_ids or None),
        ("notes", inv.notes or None),
    ]
    for name, value in rows:
        if value is not None:
            facts.add_row(name, escape(_fact(value)))
    out.print(facts)
    lines = Table()
    for header, right in (
        ("RESOURCE", False),
        ("DESCRIPTION", False),
        ("QUANTITY", True),
        ("UNIT", False),
        ("UNIT PRICE", True),
        ("AMOUNT", True),
    ):
        lines.add_column(header, justify="right" if right else "left", overflow="fold")
    for ln in inv.lines:
        resource = ln.resource_name or ln.resource_id or ""
        if ln.resource_kind:
            resource = f"{resource} ({ln.resource_kind})"
        lines.add_row(
            escape(resource),
            escape(ln.description),
            escape(ln.quantity),
            escape(ln.unit),
            escape(ln.unit_price),
            escape(ln.amount),
        )
    if not inv.lines:
        out.print("No billable usage.")
    else:
        out.print(lines)
    cur = escape(inv.currency)
    out.print(f"Subtotal {escape(inv.subtotal)} {cur}")
    out.print(f"[bold]Total {escape(inv.total)} {cur}[/]")
    if inv.credited not in ("0", "0.00", "0.000"):
        out.print(f"Credited {escape(inv.credited)} {cur}")


@app.command("list")
def list_invoices(
    org: OrgOpt = None,
    children: Annotated[
        bool, typer.Option("--children", help="Also the organisations it made (a reseller).")
    ] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Every organisation's (platform admins).")
    ] = False,
    status: Annotated[str | None, typer.Option(help="draft, open, paid or void.")] = None,
    kind: Annotated[str | None, typer.Option(help="invoice or credit_note.")] = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List invoices and credit notes, newest period first."""
    with api(as_json) as c:
        rows = c.invoices.list(
            organisation_id=org,
            include_children=children or None,
            all_organisations=every or None,
            status=status,
            kind=kind,
            page=page,
            cursor=cursor,
            limit=limit,
        )
    listing(rows, INVOICE_COLUMNS, as_json, empty="No invoices.")


@app.command("show")
def show_invoice(invoice_id: InvoiceArg, as_json: JsonOpt = False) -> None:
    """Show an invoice and its lines."""
    with api(as_json) as c:
        inv = c.invoices.get(invoice_id)
    print_invoice(inv, as_json)


@app.command("html")
def html(
    invoice_id: InvoiceArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the page to this file (default: stdout)."),
    ] = None,
) -> None:
    """The invoice as a printable HTML page (print it to PDF from a browser)."""
    with api(False) as c:
        page = c.invoices.html(invoice_id)
    if output is None:
        typer.echo(page, nl=False)
        return
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"Cannot write {output}: {exc.strerror}", code=1, as_json=False)
    stdout().print(f"Wrote {escape(str(output))}")


@app.command("history")
def history(
    start: Annotated[
        str | None, typer.Option("--from", help="Bills whose period ends after (ISO 8601).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Bills whose period starts before (ISO 8601).")
    ] = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The billing history: finalized invoices, newest first."""
    with api(as_json) as c:
        found = c.invoices.history(
            start_date=start,
            end_date=end,
            organisation_id=org,
            page=page,
            cursor=cursor,
            limit=limit,
        )
    if as_json:
        echo_json(found)
        return
    listing(found.bills, BILL_COLUMNS, as_json, empty="No bills.")
    p = found.pagination
    if p.pages is not None and p.pages > 1:
        stdout().print(f"[dim]Page {p.page} of {p.pages} ({p.total} in all).[/]")
    if p.next_cursor:
        stdout().print(f"[dim]Next page: --cursor {p.next_cursor}[/]")


@app.command("create")
def create(
    org_id: Annotated[str, typer.Argument(help="Organisation id.", show_default=False)],
    start: Annotated[
        str | None, typer.Option("--from", help="Period start (ISO 8601, UTC).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Period end, exclusive (ISO 8601, UTC).")
    ] = None,
    notes: Annotated[str | None, typer.Option(help="Printed on the invoice.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Platform admins: a draft invoice for the period (default: this period so far)."""
    with api(as_json) as c:
        inv = c.invoices.create(org_id, period_start=start, period_end=end, notes=notes)
    print_invoice(inv, as_json)


@app.command("finalize")
def finalize(invoice_id: InvoiceArg, as_json: JsonOpt = False) -> None:
    """Platform admins: number a draft and freeze it."""
    with api(as_json) as c:
        inv = c.invoices.finalize(invoice_id)
    print_invoice(inv, as_json)


@app.command("void")
def void(invoice_id: InvoiceArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Platform admins: void a draft or open invoice."""
    if not yes:
        typer.confirm(f"Void invoice {invoice_id}?", abort=True)
    with api(as_json) as c:
        inv = c.invoices.void(invoice_id)
    print_invoice(inv, as_json)


@app.command("credit-note")
def credit_note(
    invoice_id: InvoiceArg,
    reason: Annotated[str, typer.Option(help="Why (printed on it).", show_default=False)],
    amount: Annotated[
        str | None, typer.Option(help="Credit this much off the invoice (e.g. 5.00).")
    ] = None,
    line: Annotated[
        list[str] | None,
        typer.Option(
            "--line",
            help="Credit a line: LINE_ID (what is left of it) or LINE_ID=AMOUNT (repeat).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Platform admins: a credit note, refunded to the organisation's wallet."""
    lines: list[str | tuple[str, str]] | None = None
    if line:
        lines = []
        for spec in line:
            line_id, given, value = spec.partition("=")
            lines.append((line_id, value) if given else line_id)
    with api(as_json) as c:
        note = c.invoices.credit_note(invoice_id, reason=reason, amount=amount, lines=lines)
    print_invoice(note, as_json)
