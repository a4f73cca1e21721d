"""`nefos billing ...`: what the organisation's resources used and cost."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import Column, JsonOpt, api, echo_json, show, stdout
from nefos.cli.wallet import OrgOpt

app = typer.Typer(no_args_is_help=True, help="Usage and costs: this period, per resource.")

SinceOpt = Annotated[str | None, typer.Option("--from", help="From (ISO 8601).")]
UntilOpt = Annotated[str | None, typer.Option("--to", help="Until, exclusive (ISO 8601).")]

ITEM_COLUMNS: list[Column] = [
    ("KIND", "kind"),
    ("ID", "id"),
    ("NAME", "name"),
    ("vCPU-h", "cpu"),
    ("GB-h", "memory"),
    ("GB-day", "storage"),
    ("COST", "cost"),
]


@app.command("summary")
def summary(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """The current period's cost so far, per container, VM and volume."""
    from rich.table import Table

    with api(as_json) as c:
        s = c.billing.summary(organisation_id=org)
    if as_json:
        echo_json(s)
        return
    p = s.current_period
    out = stdout()
    out.print(
        f"Period {p.start_date:%Y-%m-%d} to {p.end_date:%Y-%m-%d}: "
        f"[bold]{p.total_cost} {p.currency}[/bold]"
    )
    table = Table(*(h for h, _ in ITEM_COLUMNS), box=None)
    for kind, items in (("container", s.containers), ("vm", s.vms), ("volume", s.volumes)):
        for item in items:
            extra = item.model_extra or {}
            table.add_row(
                kind,
                str(extra.get(f"{kind}_id", "")),
                item.name,
                f"{item.usage.cpu_hours:g}",
                f"{item.usage.memory_gb_hours:g}",
                f"{item.usage.storage_gb_days:g}",
                item.cost,
            )
    if table.row_count:
        out.print(table)


@app.command("usage")
def usage(
    kind: Annotated[str, typer.Argument(help="container or vm.", show_default=False)],
    resource_id: Annotated[str, typer.Argument(help="Its id.", show_default=False)],
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A container's or VM's usage and cost per meter (default: this period)."""
    with api(as_json) as c:
        if kind == "container":
            u = c.billing.container_usage(resource_id, start_date=since, end_date=until)
        elif kind == "vm":
            u = c.billing.vm_usage(resource_id, start_date=since, end_date=until)
        else:
            raise typer.BadParameter("container or vm", param_hint="KIND")
    show(u, as_json, title=f"{kind} {u.name or resource_id}")
