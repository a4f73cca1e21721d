"""`nefos alert-rule ...`, `nefos alert ...` and `nefos webhook ...`: alerting."""

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
    done,
    listing,
    show,
    stdout,
)
from nefos.cli.vms import ProjectOpt

rules = typer.Typer(
    no_args_is_help=True,
    help="Alert rules: a metric over (or under) a threshold for a while fires an alert.",
)
alerts = typer.Typer(no_args_is_help=True, help="Alerts: pending, firing and resolved.")
webhooks = typer.Typer(
    no_args_is_help=True, help="Webhooks: signed HTTP callbacks of a project's alerts."
)

RuleArg = Annotated[str, typer.Argument(help="Alert rule id.", show_default=False)]
AlertArg = Annotated[str, typer.Argument(help="Alert id.", show_default=False)]
WebhookArg = Annotated[str, typer.Argument(help="Webhook id.", show_default=False)]
MetricOpt = Annotated[
    str | None,
    typer.Option(
        help="cpu_percent, memory_percent, memory_bytes, net_rx_bps, net_tx_bps, "
        "disk_read_bps or disk_write_bps."
    ),
]
ComparisonOpt = Annotated[str | None, typer.Option(help="gt, gte, lt or lte.")]
SeverityOpt = Annotated[str | None, typer.Option(help="info, warning or critical.")]

RULE_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("CONDITION", lambda r: f"{r.metric} {r.comparison} {r.threshold:g}"),
    ("FOR", lambda r: f"{r.duration_seconds}s"),
    ("SEVERITY", "severity"),
    ("ENABLED", "enabled"),
]
ALERT_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("STATUS", "status"),
    ("SEVERITY", "severity"),
    ("NAME", "name"),
    ("RESOURCE", lambda a: f"{a.resource_kind} {a.resource_id[:8]}"),
    ("VALUE", "value"),
    ("STARTED", "started_at"),
    ("RESOLVED", "resolved_at"),
]
WEBHOOK_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("URL", "url"),
    ("EVENTS", "events"),
    ("ENABLED", "enabled"),
    ("CREATED", "created_at"),
]
DELIVERY_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("EVENT", "event_type"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempts"),
    ("CODE", "last_status_code"),
    ("ERROR", "last_error"),
    ("CREATED", "created_at"),
]


# --- alert rules -------------------------------------------------------------------------
@rules.command("list")
def list_rules(
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's alert rules."""
    with api(as_json) as c:
        rows = c.alert_rules.list(project_id=project, page=page, cursor=cursor, limit=limit)
    listing(rows, RULE_COLUMNS, as_json, empty="No alert rules.")


@rules.command("show")
def show_rule(rule_id: RuleArg, as_json: JsonOpt = False) -> None:
    """Show an alert rule."""
    with api(as_json) as c:
        rule = c.alert_rules.get(rule_id)
    show(rule, as_json)


@rules.command("create")
def create_rule(
    name: Annotated[str, typer.Argument(help="Name, unique in the project.", show_default=False)],
    metric: Annotated[str, typer.Option(help="The metric, e.g. cpu_percent.", show_default=False)],
    threshold: Annotated[float, typer.Option(help="The threshold.", show_default=False)],
    comparison: Annotated[str, typer.Option(help="gt, gte, lt or lte.")] = "gt",
    duration: Annotated[
        int, typer.Option("--for", min=0, help="Seconds the condition must hold before firing.")
    ] = 0,
    severity: Annotated[str, typer.Option(help="info, warning or critical.")] = "warning",
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only VMs (vm) or containers (container).")
    ] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", help="Only this VM or container (its id).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an alert rule, e.g. `--metric cpu_percent --threshold 90 --for 300`."""
    with api(as_json) as c:
        rule = c.alert_rules.create(
            name,
            metric=metric,
            threshold=threshold,
            comparison=comparison,
            duration_seconds=duration,
            severity=severity,
            resource_kind=kind,
            resource_id=resource,
            description=description,
            enabled=not disabled,
            project_id=project,
        )
    show(rule, as_json)


@rules.command("update")
def update_rule(
    rule_id: RuleArg,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    metric: MetricOpt = None,
    threshold: Annotated[float | None, typer.Option(help="New threshold.")] = None,
    comparison: ComparisonOpt = None,
    duration: Annotated[
        int | None, typer.Option("--for", min=0, help="Seconds the condition must hold.")
    ] = None,
    severity: SeverityOpt = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Turn the rule on or off.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an alert rule (disabling it resolves its open alerts)."""
    with api(as_json) as c:
        rule = c.alert_rules.update(
            rule_id,
            name=name,
            metric=metric,
            threshold=threshold,
            comparison=comparison,
            duration_seconds=duration,
            severity=severity,
            enabled=enabled,
        )
    show(rule, as_json)


@rules.command("rm")
def rm_rule(rule_id: RuleArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete an alert rule (its past alerts are kept)."""
    if not yes:
        typer.confirm(f"Delete alert rule {rule_id}?", abort=True)
    with api(as_json) as c:
        message = c.alert_rules.delete(rule_id)
    done(message.message, as_json, message)


# --- alerts ------------------------------------------------------------------------------
@alerts.command("list")
def list_alerts(
    status: Annotated[
        str | None, typer.Option(help="pending, firing, resolved, or open (not resolved).")
    ] = None,
    severity: SeverityOpt = None,
    resource: Annotated[str | None, typer.Option(help="Only this resource's.")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule's.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only alerts started since (ISO 8601 time).")
    ] = None,
    platform: Annotated[
        bool, typer.Option("--platform", help="The platform's alerts (hosts; admins only).")
    ] = False,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List alerts, newest first."""
    with api(as_json) as c:
        rows = c.alerts.list(
            status=status,
            severity=severity,
            resource_id=resource,
            rule_id=rule,
            since=since,
            platform=platform or None,
            project_id=project,
            page=page,
            cursor=cursor,
            limit=limit,
        )
    listing(rows, ALERT_COLUMNS, as_json, empty="No alerts.")


@alerts.command("show")
def show_alert(alert_id: AlertArg, as_json: JsonOpt = False) -> None:
    """Show an alert."""
    with api(as_json) as c:
        alert = c.alerts.get(alert_id)
    show(alert, as_json)


# --- webhooks ----------------------------------------------------------------------------
@webhooks.command("create")
def create_webhook(
    url: Annotated[str, typer.Argument(help="The http(s) endpoint.", show_default=False)],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="alert.firing or alert.resolved (repeat; default both)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it is for.")] = None,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a webhook. Its signing secret is printed this once: keep it."""
    with api(as_json) as c:
        hook = c.webhooks.create(url, events=event, description=description, project_id=project)
    show(hook, as_json)
    if not as_json:
        stdout().print("Keep the secret: it is not shown again.")


@webhooks.command("list")
def list_webhooks(
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's webhooks."""
    with api(as_json) as c:
        rows = c.webhooks.list(project_id=project, page=page, cursor=cursor, limit=limit)
    listing(rows, WEBHOOK_COLUMNS, as_json, empty="No webhooks.")


@webhooks.command("show")
def show_webhook(webhook_id: WebhookArg, as_json: JsonOpt = False) -> None:
    """Show a webhook."""
    with api(as_json) as c:
        hook = c.webhooks.get(webhook_id)
    show(hook, as_json)


@webhooks.command("rm")
def rm_webhook(webhook_id: WebhookArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a webhook and its delivery log."""
    if not yes:
        typer.confirm(f"Delete webhook {webhook_id}?", abort=True)
    with api(as_json) as c:
        message = c.webhooks.delete(webhook_id)
    done(message.message, as_json, message)


@webhooks.command("deliveries")
def deliveries(
    webhook_id: WebhookArg,
    status: Annotated[str | None, typer.Option(help="pending, succeeded or failed.")] = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a webhook's deliveries, newest first."""
    with api(as_json) as c:
        rows = c.webhooks.deliveries(
            webhook_id, status=status, page=page, cursor=cursor, limit=limit
        )
    listing(rows, DELIVERY_COLUMNS, as_json, empty="No deliveries.")


@webhooks.command("test")
def test_webhook(webhook_id: WebhookArg, as_json: JsonOpt = False) -> None:
    """Send a ping delivery."""
    with api(as_json) as c:
        delivery = c.webhooks.test(webhook_id)
    if as_json:
        show(delivery, as_json)
    else:
        stdout().print(
            f"Ping queued: delivery {delivery.id}\n"
            f"Follow it with: nefos webhook deliveries {webhook_id}"
        )
