from __future__ import annotations

import typer

from nefos.cli import (
    admin,
    alerts,
    analytics,
    api_keys,
    apis,
    auth,
    backups,
    billing,
    containers,
    events,
    hosts,
    images,
    invoices,
    loadtest,
    marketplace,
    networks,
    operations,
    orgs,
    payments,
    projects,
    quotes,
    rate_limits,
    services,
    sessions,
    snapshots,
    vms,
    volumes,
    wallet,
)
from nefos.cli.serve import serve

app = typer.Typer(
    no_args_is_help=True,
    help="Nefos: cloud control plane for VMs and containers.",
    epilog=(
        "Credentials: `nefos login` keeps a session in $NEFOS_CONFIG "
        "(default ~/.config/nefos/config.json); NEFOS_API_KEY overrides it and NEFOS_URL "
        "names the server. Exit codes: 1 API error, 3 server unreachable, 4 not logged in."
    ),
)


@app.callback()
def _root() -> None:
    """Nefos: cloud control plane for VMs and containers."""


app.command()(serve)
app.command()(auth.login)
app.command()(auth.logout)
app.command()(auth.whoami)
app.command()(events.events)
app.add_typer(orgs.app, name="org")
app.add_typer(projects.app, name="project")
app.add_typer(api_keys.app, name="api-key")
app.add_typer(sessions.app, name="session")
app.add_typer(admin.app, name="admin")
app.add_typer(hosts.app, name="host")
app.add_typer(containers.app, name="container")
app.add_typer(services.app, name="service")
app.add_typer(apis.app, name="api")
app.add_typer(marketplace.app, name="marketplace")
app.add_typer(vms.app, name="vm")
app.add_typer(images.app, name="image")
app.add_typer(snapshots.app, name="snapshot")
app.add_typer(backups.app, name="backup")
app.add_typer(volumes.app, name="volume")
app.add_typer(networks.app, name="network")
app.add_typer(operations.app, name="operation")
app.add_typer(alerts.rules, name="alert-rule")
app.add_typer(alerts.alerts, name="alert")
app.add_typer(alerts.webhooks, name="webhook")
app.add_typer(payments.app, name="payment")
app.add_typer(quotes.products, name="product")
app.add_typer(quotes.quotes, name="quote")
app.add_typer(quotes.payouts, name="payout")
app.add_typer(quotes.accounts, name="billing-account")
app.add_typer(billing.app, name="billing")
app.add_typer(wallet.app, name="wallet")
app.add_typer(invoices.app, name="invoice")
app.add_typer(analytics.app, name="analytics")
app.add_typer(rate_limits.app, name="rate-limit")
app.add_typer(loadtest.app, name="loadtest")


def main() -> None:
    app()
