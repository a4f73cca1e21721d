"""`nefos payment ...`: wallet top-ups through a payment provider.

`nefos wallet top-up` (in ``cli.wallet``) is the same with the top-up route's
defaults; both print a pending Stripe payment's client secret and what to do next.
"""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    YesOpt,
    api,
    echo_json,
    listing,
    show,
)
from nefos.schemas.billing import PaymentPublic

app = typer.Typer(
    no_args_is_help=True,
    help="Payments: top-ups by bank transfer (confirmed by a platform admin) or Stripe.",
)

PaymentArg = Annotated[str, typer.Argument(help="Payment id.", show_default=False)]
AmountArg = Annotated[
    str, typer.Argument(help="Amount, a decimal such as 25.00.", show_default=False)
]
CurrencyOpt = Annotated[
    str | None, typer.Option(help="ISO 4217 code (default: the wallet's currency).")
]
ProviderOpt = Annotated[
    str | None,
    typer.Option(
        help="manual (bank transfer), stripe, or credit (platform admins). "
        "Default: stripe where the platform has it, else manual."
    ),
]
OrgOpt = Annotated[
    str | None,
    typer.Option("--org", help="Organisation id (default: your default project's)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        help="Makes a retry safe: the same key returns the same payment, credited once.",
    ),
]

COLUMNS: list[Column] = [
    ("ID", "id"),
    ("STATUS", "status"),
    ("PROVIDER", "provider"),
    ("AMOUNT", lambda p: f"{p.amount} {p.currency}"),
    ("DESCRIPTION", "description"),
    ("CREATED", "created_at"),
    ("COMPLETED", "completed_at"),
]


def show_payment(payment: PaymentPublic, as_json: bool) -> None:
    """The payment, and what is left to do to complete it."""
    show(payment, as_json, title=f"Payment {payment.id}")
    if as_json or payment.status != "pending":
        return
    if payment.client_secret:
        typer.echo(
            "Pay it with Stripe.js (or a Stripe mobile SDK) and this client_secret; "
            "the wallet is credited when Stripe tells Nefos the money arrived.",
            err=True,
        )
    elif payment.provider == "manual":
        typer.echo(
            "Pending until a platform admin confirms the transfer: "
            f"nefos payment confirm {payment.id}",
            err=True,
        )


@app.command("list")
def list_payments(
    status: Annotated[
        str | None, typer.Option(help="pending, succeeded, failed or cancelled.")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="credit, manual or stripe.")] = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the organisation's payments, newest first."""
    with api(as_json) as c:
        rows = c.payments.list(
            status=status,
            provider=provider,
            organisation_id=org,
            page=page,
            cursor=cursor,
            limit=limit,
        )
    listing(rows, COLUMNS, as_json, empty="No payments.")


@app.command("show")
def show_one(payment_id: PaymentArg, as_json: JsonOpt = False) -> None:
    """Show a payment."""
    with api(as_json) as c:
        payment = c.payments.get(payment_id)
    show_payment(payment, as_json)


@app.command("create")
def create(
    amount: AmountArg,
    currency: CurrencyOpt = None,
    provider: ProviderOpt = None,
    description: Annotated[
        str | None, typer.Option(help="What it is for (for a credit: the reason).")
    ] = None,
    org: OrgOpt = None,
    idempotency_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a payment to top up the wallet."""
    with api(as_json) as c:
        payment = c.payments.create(
            amount,
            currency=currency,
            provider=provider,
            description=description,
            organisation_id=org,
            idempotency_key=idempotency_key,
        )
    show_payment(payment, as_json)


@app.command("methods")
def methods(as_json: JsonOpt = False) -> None:
    """How the platform takes money: the providers, the default, cards (Stripe.js)."""
    with api(as_json) as c:
        found = c.payments.methods()
    if as_json:
        echo_json(found)
        return
    typer.echo(f"Providers: {', '.join(found.providers)} (default {found.default})")
    if found.card:
        typer.echo(f"Cards: Stripe.js from {found.card.js_url}, key {found.card.publishable_key}")
    else:
        typer.echo("Cards: not taken in the console (no Stripe publishable key)")


@app.command("refresh")
def refresh(payment_id: PaymentArg, as_json: JsonOpt = False) -> None:
    """Ask Stripe how a Stripe payment stands; the wallet is credited once it has the
    money."""
    with api(as_json) as c:
        payment = c.payments.refresh(payment_id)
    show_payment(payment, as_json)


@app.command("confirm")
def confirm(payment_id: PaymentArg, as_json: JsonOpt = False) -> None:
    """Platform admins: the transfer arrived; credit the wallet (once)."""
    with api(as_json) as c:
        payment = c.payments.confirm(payment_id)
    show_payment(payment, as_json)


@app.command("fail")
def fail(
    payment_id: PaymentArg,
    reason: Annotated[str | None, typer.Option(help="Why it will not arrive.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Platform admins: a pending bank transfer will not arrive."""
    with api(as_json) as c:
        payment = c.payments.fail(payment_id, reason=reason)
    show_payment(payment, as_json)


@app.command("cancel")
def cancel(payment_id: PaymentArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Cancel a pending payment."""
    if not yes:
        typer.confirm(f"Cancel payment {payment_id}?", abort=True)
    with api(as_json) as c:
        payment = c.payments.cancel(payment_id)
    show_payment(payment, as_json)
