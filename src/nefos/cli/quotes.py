"""`nefos product ...`, `nefos quote ...`, `nefos payout ...` and
`nefos billing-account ...`: the catalogue, quotes, payouts of earnings and an
organisation's billing settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    WaitOpt,
    YesOpt,
    api,
    echo_json,
    listing,
    show,
    stdout,
    wait_for,
)
from nefos.cli.vms import ProjectOpt, memory_mb
from nefos.schemas.billing import QuoteAccepted, QuotePublic
from nefos.sdk import Client

products = typer.Typer(no_args_is_help=True, help="The price catalogue.")
quotes = typer.Typer(
    no_args_is_help=True,
    help="Quotes: price VMs, containers and volumes for a month, then accept to provision.",
)
payouts = typer.Typer(
    no_args_is_help=True,
    help="Payouts of earnings (a reseller's margins), and the revenue overview.",
)
accounts = typer.Typer(
    no_args_is_help=True,
    help="An organisation's billing settings: currency, low-balance threshold, margin.",
)

OrgOpt = Annotated[
    str | None,
    typer.Option("--org", help="Organisation id (default: your default project's)."),
]
CurrencyOpt = Annotated[str | None, typer.Option(help="ISO 4217 code, e.g. USD.")]
SkuArg = Annotated[
    str,
    typer.Argument(
        help="vcpu_hour, ram_gb_hour, storage_gb_day, network_gb, container_hour, vm_hour, "
        "api_call or flavor:<name>.",
        show_default=False,
    ),
]
QuoteArg = Annotated[str, typer.Argument(help="Quote id.", show_default=False)]
PayoutArg = Annotated[str, typer.Argument(help="Payout id.", show_default=False)]
VmSpec = Annotated[
    list[str] | None,
    typer.Option(
        "--vm",
        metavar="SPEC",
        help="VMs: count,cpu,memory (512m, 4g),storage (GB),image,os,flavor,name.",
        show_default=False,
    ),
]
ContainerSpec = Annotated[
    list[str] | None,
    typer.Option(
        "--container",
        metavar="SPEC",
        help="Containers: count,cpu,memory,storage (GB),replicas,image,ports (a;b),name.",
        show_default=False,
    ),
]
VolumeSpec = Annotated[
    list[str] | None,
    typer.Option(
        "--volume", metavar="SPEC", help="Volumes: size (GB),count,name.", show_default=False
    ),
]

PRODUCT_COLUMNS: list[Column] = [
    ("SKU", "sku"),
    ("NAME", "name"),
    ("PRICE", lambda p: f"{p.unit_price} {p.currency}"),
    ("UNIT", "unit"),
    ("FROM", "effective_from"),
    ("TO", "effective_to"),
]
QUOTE_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("MONTHLY", lambda q: f"{q.monthly_total} {q.currency}"),
    ("HOURS", "hours_per_month"),
    ("VALID UNTIL", "valid_until"),
]
PAYOUT_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("AMOUNT", lambda p: f"{p.amount} {p.currency}"),
    ("STATUS", "status"),
    ("METHOD", "method"),
    ("REQUESTED", "created_at"),
    ("PROCESSED", "processed_at"),
]
TRANSACTION_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("TYPE", "type"),
    ("AMOUNT", lambda t: f"{t.amount} {t.currency}"),
    ("BALANCE", "balance_after"),
    ("DESCRIPTION", "description"),
    ("AT", "created_at"),
]


# --- products ----------------------------------------------------------------------------
@products.command("list")
def list_products(
    currency: CurrencyOpt = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The prices in force, as your organisation pays them (margin included)."""
    with api(as_json) as c:
        found = c.products.list(
            currency=currency, organisation_id=org, page=page, cursor=cursor, limit=limit
        )
    if as_json:
        echo_json(found)
        return
    listing(found.items, PRODUCT_COLUMNS, as_json, empty="No prices in this currency.")


@products.command("history")
def product_history(
    sku: SkuArg,
    currency: CurrencyOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every price a SKU has had, newest first (platform admins)."""
    with api(as_json) as c:
        rows = c.products.history(sku, currency=currency, page=page, cursor=cursor, limit=limit)
    listing(rows, PRODUCT_COLUMNS, as_json, empty="No prices.")


@products.command("set-price")
def set_price(
    sku: SkuArg,
    price: Annotated[str, typer.Argument(help="The new unit price, e.g. 0.05.")],
    currency: CurrencyOpt = None,
    name: Annotated[str | None, typer.Option(help="A new display name.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a SKU's price from now on (platform admins); the old price closes. A new
    flavor (flavor:NAME) is offered from now on."""
    with api(as_json) as c:
        product = c.products.set_price(sku, price, currency=currency, name=name)
    show(product, as_json)


@products.command("retire")
def retire(
    sku: SkuArg, currency: CurrencyOpt = None, yes: YesOpt = False, as_json: JsonOpt = False
) -> None:
    """Retire a flavor (platform admins): its price closes now, with none after it;
    VMs of that flavor are then rated by their vCPUs, memory and storage."""
    if not yes:
        typer.confirm(f"Retire {sku}?", abort=True)
    with api(as_json) as c:
        product = c.products.retire(sku, currency=currency)
    if as_json:
        echo_json(product)
    else:
        typer.echo(f"{product.sku} retired: its price closed at {product.effective_to}.")


# --- quotes ------------------------------------------------------------------------------
_VM_KEYS = {
    "count": ("count", int),
    "cpu": ("cpu_cores", int),
    "memory": ("memory_mb", None),
    "memory_gb": ("memory_gb", float),
    "storage": ("storage_gb", int),
    "image": ("image_id", str),
    "os": ("os_type", str),
    "os_version": ("os_version", str),
    "flavor": ("flavor", str),
    "name": ("name", str),
}
_CONTAINER_KEYS = {
    "count": ("count", int),
    "cpu": ("cpu", str),
    "memory": ("memory", str),
    "storage": ("storage_gb", int),
    "replicas": ("replicas", int),
    "image": ("image", str),
    "ports": ("ports", list),
    "name": ("name", str),
}
_VOLUME_KEYS = {"count": ("count", int), "size": ("size_gb", int), "name": ("name", str)}


def _item(kind: str, spec: str, keys: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """``count=2,cpu=2,memory=4g`` as a quote item."""
    item: dict[str, Any] = {"type": kind}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in keys:
            raise typer.BadParameter(
                f"{part!r}: use key=value with keys {', '.join(keys)}", param_hint=f"--{kind}"
            )
        field, convert = keys[key]
        try:
            if convert is None:
                item[field] = memory_mb(value)
            elif convert is list:
                item[field] = [v for v in value.split(";") if v]
            else:
                item[field] = convert(value)
        except (ValueError, typer.BadParameter) as exc:
            raise typer.BadParameter(f"{part!r}: {exc}", param_hint=f"--{kind}") from None
    return item


def _read_body(file: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
        body = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read a JSON body: {exc}", param_hint="--file") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("the body is a JSON object", param_hint="--file")
    return body


def _print_quote(quote: QuotePublic) -> None:
    console = stdout()
    console.print(
        f"Quote {quote.id} [bold]{escape(quote.name or '-')}[/]: {quote.status}, "
        f"{quote.hours_per_month} hours a month, valid until {quote.valid_until:%Y-%m-%d %H:%M}Z"
    )
    table = Table()
    for header in ("ITEM", "NAME", "SKU", "QUANTITY", "UNIT", "UNIT PRICE", "MONTHLY"):
        table.add_column(header, overflow="fold")
    for ln in quote.lines:
        table.add_row(
            f"{ln.item} {ln.type} x{ln.count}",
            escape(ln.name),
            ln.sku,
            ln.quantity,
            ln.unit,
            ln.unit_price,
            f"{ln.amount} {ln.currency}",
        )
    console.print(table)
    console.print(f"[bold]Monthly total: {quote.monthly_total} {quote.currency}[/]")
    if quote.failure_reason:
        console.print(f"[red]Failed:[/] {escape(quote.failure_reason)}")
    for r in quote.resources:
        console.print(f"  {r.type} {escape(r.name)}: {r.id or 'not made yet'}")


@quotes.command("create")
def create_quote(
    vm: VmSpec = None,
    container: ContainerSpec = None,
    volume: VolumeSpec = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="The whole body as JSON ('-': standard input)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The quote's name.")] = None,
    hours: Annotated[
        int | None, typer.Option("--hours", min=1, max=744, help="Hours a month (default 730).")
    ] = None,
    project: ProjectOpt = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Price a configuration for a month. Items are repeatable options:
    `--vm count=2,cpu=2,memory=4g,storage=20,image=<id>`,
    `--container count=1,cpu=0.5,memory=512m,replicas=3,image=nginx:alpine,ports=8080`,
    `--volume size=100`; or `--file body.json`."""
    items = [_item("vm", s, _VM_KEYS) for s in vm or []]
    items += [_item("container", s, _CONTAINER_KEYS) for s in container or []]
    items += [_item("volume", s, _VOLUME_KEYS) for s in volume or []]
    body = _read_body(file) if file is not None else {}
    items = list(body.get("items") or []) + items
    if not items:
        raise typer.BadParameter("give at least one --vm, --container or --volume (or --file)")
    with api(as_json) as c:
        quote = c.quotes.create(
            items,
            name=name or body.get("name"),
            hours_per_month=hours or body.get("hours_per_month"),
            project_id=project or body.get("project_id"),
            organisation_id=org or body.get("organisation_id"),
        )
    if as_json:
        echo_json(quote)
    else:
        _print_quote(quote)


@quotes.command("list")
def list_quotes(
    status: Annotated[
        str | None, typer.Option(help="open, accepting, accepted, failed or expired.")
    ] = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The organisation's quotes, newest first."""
    with api(as_json) as c:
        rows = c.quotes.list(
            status=status, organisation_id=org, page=page, cursor=cursor, limit=limit
        )
    listing(rows, QUOTE_COLUMNS, as_json, empty="No quotes.")


@quotes.command("show")
def show_quote(quote_id: QuoteArg, as_json: JsonOpt = False) -> None:
    """A quote, line by line."""
    with api(as_json) as c:
        quote = c.quotes.get(quote_id)
    if as_json:
        echo_json(quote)
    else:
        _print_quote(quote)


def _report_accepted(c: Client, accepted: QuoteAccepted, wait: bool, as_json: bool) -> None:
    finals: dict[str, Any] = {}
    if wait:
        for r in accepted.resources:
            if r.operation is not None:
                finals[r.operation.id] = wait_for(c, r.operation.id, as_json)
    if as_json:
        data: dict[str, Any] = accepted.model_dump(mode="json")
        for r in data["resources"]:
            if r["operation"] and r["operation"]["id"] in finals:
                r["operation"] = finals[r["operation"]["id"]].model_dump(mode="json")
        echo_json(data)
        return
    console = stdout()
    console.print(f"{escape(accepted.message)}: quote {accepted.quote.id}")
    for r in accepted.resources:
        op = r.operation
        if op is None:
            how = "made (its operation is gone)"
        else:
            how = f"operation {op.id} {finals[op.id].status if op.id in finals else op.status}"
        console.print(f"  {r.type} {escape(r.name)} ({r.id}): {how}")


@quotes.command("accept")
def accept_quote(
    quote_id: QuoteArg,
    project: Annotated[
        str | None,
        typer.Option("--project", help="Only for a quote made without a project."),
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Provision the quote: its VMs, containers and volumes are created. Run it again
    after a failure half-way: it resumes, and makes nothing twice."""
    with api(as_json) as c:
        accepted = c.quotes.accept(quote_id, project_id=project)
        _report_accepted(c, accepted, wait, as_json)


# --- payouts -----------------------------------------------------------------------------
@payouts.command("list")
def list_payouts(
    status: Annotated[str | None, typer.Option(help="pending, paid or rejected.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every organisation's (platform admins).")
    ] = False,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Payouts, newest first."""
    with api(as_json) as c:
        rows = c.payouts.list(
            status=status, all=every, organisation_id=org, page=page, cursor=cursor, limit=limit
        )
    listing(rows, PAYOUT_COLUMNS, as_json, empty="No payouts.")


@payouts.command("show")
def show_payout(payout_id: PayoutArg, as_json: JsonOpt = False) -> None:
    with api(as_json) as c:
        payout = c.payouts.get(payout_id)
    show(payout, as_json)


@payouts.command("request")
def request_payout(
    amount: Annotated[str, typer.Argument(help="How much, e.g. 25.00.", show_default=False)],
    currency: CurrencyOpt = None,
    method: Annotated[
        str | None, typer.Option(help="bank_transfer, paypal, stripe or manual.")
    ] = None,
    destination: Annotated[str | None, typer.Option(help="IBAN, e-mail, ...")] = None,
    note: Annotated[str | None, typer.Option(help="A note for the platform.")] = None,
    key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Retry safely: the same key, the same payout."),
    ] = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for earnings to be paid out (organisation admins). The wallet is debited
    at once; the payout waits for a platform admin."""
    with api(as_json) as c:
        payout = c.payouts.request(
            amount,
            currency=currency,
            method=method,
            destination=destination,
            note=note,
            organisation_id=org,
            idempotency_key=key,
        )
    show(payout, as_json)


NoteOpt = Annotated[str | None, typer.Option(help="A transfer reference, or why.")]


@payouts.command("settle")
def settle_payout(payout_id: PayoutArg, note: NoteOpt = None, as_json: JsonOpt = False) -> None:
    """Mark a pending payout paid (platform admins)."""
    with api(as_json) as c:
        payout = c.payouts.settle(payout_id, note=note)
    show(payout, as_json)


@payouts.command("reject")
def reject_payout(payout_id: PayoutArg, note: NoteOpt = None, as_json: JsonOpt = False) -> None:
    """Reject a pending payout (platform admins): the amount goes back to the wallet."""
    with api(as_json) as c:
        payout = c.payouts.reject(payout_id, note=note)
    show(payout, as_json)


@payouts.command("overview")
def overview(
    start: Annotated[str | None, typer.Option("--from", help="Start date (2026-01-01).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End date, included.")] = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The revenue summary: balance, earnings available for payout, the period's
    revenue, charges, top-ups and payouts."""
    with api(as_json) as c:
        found = c.billing_account.overview(start_date=start, end_date=end, organisation_id=org)
    show(found, as_json, title="Revenue overview")


@payouts.command("transactions")
def transactions(
    type: Annotated[
        str | None,
        typer.Option(help="top_up, charge, refund, adjustment, payout or revenue."),
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start date.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End date, included.")] = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The wallet's transactions, newest first."""
    with api(as_json) as c:
        rows = c.billing_account.transactions(
            type=type,
            start_date=start,
            end_date=end,
            organisation_id=org,
            page=page,
            cursor=cursor,
            limit=limit,
        )
    listing(rows, TRANSACTION_COLUMNS, as_json, empty="No transactions.")


# --- billing account ---------------------------------------------------------------------
@accounts.command("show")
def show_account(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """The billing settings and status (and the pay-as-you-go subscription)."""
    with api(as_json) as c:
        account = c.billing_account.get(organisation_id=org)
    show(account, as_json)


@accounts.command("subscription")
def subscription(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """The current plan: prepaid pay-as-you-go, its status and period."""
    with api(as_json) as c:
        found = c.billing_account.subscription(organisation_id=org)
    show(found, as_json)


@accounts.command("update")
def update_account(
    currency: Annotated[
        str | None, typer.Option(help="Only while nothing was paid, charged or used.")
    ] = None,
    threshold: Annotated[
        str | None, typer.Option("--low-balance-threshold", help="Warn under this balance.")
    ] = None,
    margin: Annotated[
        str | None,
        typer.Option("--margin", help="Resellers: percent on child organisations' prices."),
    ] = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change billing settings (organisation admins)."""
    with api(as_json) as c:
        account = c.billing_account.update(
            currency=currency,
            low_balance_threshold=threshold,
            margin_percent=margin,
            organisation_id=org,
        )
    show(account, as_json)
