"""`nefos wallet ...`: the organisation's prepaid wallet and its ledger."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import Column, CursorOpt, JsonOpt, LimitOpt, PageOpt, api, listing, show
from nefos.cli.payments import AmountArg, CurrencyOpt, KeyOpt, show_payment

app = typer.Typer(no_args_is_help=True, help="The prepaid wallet: balance, ledger, top-ups.")

OrgOpt = Annotated[
    str | None,
    typer.Option("--org", help="Organisation id (default: your default project's)."),
]

ENTRY_COLUMNS: list[Column] = [
    ("WHEN", "created_at"),
    ("KIND", "kind"),
    ("AMOUNT", lambda e: f"{e.amount} {e.currency}"),
    ("BALANCE", "balance_after"),
    ("DESCRIPTION", "description"),
]


@app.command("show")
def show_wallet(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Balance (the sum of the ledger), pending charges, what is available, status."""
    with api(as_json) as c:
        wallet = c.wallet.get(organisation_id=org)
    show(wallet, as_json, title=f"Wallet ({wallet.currency})")


@app.command("ledger")
def ledger(
    kind: Annotated[
        str | None,
        typer.Option(help="top_up, charge, refund, adjustment, payout or revenue."),
    ] = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The wallet's ledger, newest first."""
    with api(as_json) as c:
        rows = c.wallet.ledger(
            kind=kind, organisation_id=org, page=page, cursor=cursor, limit=limit
        )
    listing(rows, ENTRY_COLUMNS, as_json, empty="No ledger entries.")


@app.command("top-up")
def top_up(
    amount: AmountArg,
    currency: CurrencyOpt = None,
    provider: Annotated[
        str | None,
        typer.Option(
            help="credit (platform admins: at once), manual (bank transfer) or stripe. "
            "Default: credit for a platform admin; else stripe where the platform has "
            "it, else manual."
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why (required for a platform admin's credit).")
    ] = None,
    org: OrgOpt = None,
    idempotency_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top up the wallet: at once by a platform admin, else a payment to complete."""
    with api(as_json) as c:
        payment = c.wallet.top_up(
            amount,
            currency=currency,
            provider=provider,
            reason=reason,
            organisation_id=org,
            idempotency_key=idempotency_key,
        )
    show_payment(payment, as_json)
