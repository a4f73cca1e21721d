"""`nefos service ...`: services, their instances' health and its history."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nefos.cli._common import (
    Column,
    JsonOpt,
    LimitOpt,
    PageOpt,
    api,
    echo_json,
    fail,
    listing,
    stdout,
)
from nefos.schemas.common import Page, Pagination
from nefos.schemas.services import ServiceList, ServicePublic, ServiceSummary

app = typer.Typer(no_args_is_help=True, help="Services: containers as services, with health.")

ServiceArg = Annotated[
    str, typer.Argument(help="Service id (its container's).", show_default=False)
]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="Project id (default: your default project).")
]

#: Health, in colour: passing green, warning yellow, critical red, maintenance blue.
COLOURS = {"passing": "green", "warning": "yellow", "critical": "red", "maintenance": "blue"}
#: One character a check result, for the timeline.
MARKS = {"passing": "▮", "warning": "▮", "critical": "▮", "maintenance": "▯"}


def coloured(health: str) -> str:
    colour = COLOURS.get(health)
    return f"[{colour}]{escape(health)}[/]" if colour else escape(health)


def timeline(history: list[Any]) -> str:
    """The check results, oldest first, one coloured mark each."""
    return "".join(
        f"[{COLOURS.get(r.status, 'white')}]{MARKS.get(r.status, '?')}[/]" for r in history
    )


SERVICE_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("VERSION", "version"),
    ("HEALTH", "health"),
    ("PASSING", lambda s: f"{s.passing}/{s.instances}"),
    ("TAGS", "tags"),
]


def _as_page(result: ServiceList) -> Page[ServiceSummary]:
    return Page[ServiceSummary](items=result.items, pagination=result.pagination)


def print_services(result: ServiceList) -> None:
    console = stdout()
    if not result.items:
        console.print("No services.")
        return
    table = Table()
    table.add_column("ID", no_wrap=True, min_width=36)
    for header in ("NAME", "VERSION", "HEALTH", "PASSING", "TAGS"):
        table.add_column(header, overflow="fold")
    for s in result.items:
        table.add_row(
            s.id,
            escape(s.name),
            escape(s.version),
            coloured(s.health),
            f"{s.passing}/{s.instances}",
            escape(", ".join(s.tags)),
        )
    console.print(table)
    p: Pagination = result.pagination
    if p.pages is not None and p.pages > 1:
        console.print(f"[dim]Page {p.page} of {p.pages} ({p.total} in all); use --page.[/]")


def print_service(s: ServicePublic) -> None:
    console = stdout()
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("id", s.id)
    head.add_row("name", escape(s.name))
    head.add_row("version", escape(s.version))
    head.add_row("health", coloured(s.health))
    head.add_row("endpoint", escape(s.endpoint or "-"))
    head.add_row("check", escape(json.dumps(s.check, separators=(",", ":"))))
    head.add_row("tags", escape(", ".join(s.tags) or "-"))
    head.add_row("metadata", escape(", ".join(f"{k}={v}" for k, v in s.metadata.items()) or "-"))
    console.print(head)
    table = Table(title="Instances")
    table.add_column("ID", no_wrap=True, min_width=36)
    for header in ("STATE", "HEALTH", "ENDPOINT", "CHECKS (oldest first)", "LAST OUTPUT"):
        table.add_column(header, overflow="fold")
    for i in s.instances:
        check = i.checks[0] if i.checks else None
        health = coloured(i.health)
        if i.maintenance_reason:
            health += f" ({escape(i.maintenance_reason)})"
        table.add_row(
            i.id,
            escape(i.state),
            health,
            escape(i.endpoint or "-"),
            timeline(check.history) if check else "",
            escape((check.output if check else "")[:80]),
        )
    console.print(table)


@app.command("list")
def list_(
    health: Annotated[
        str | None, typer.Option(help="Only this health: passing, warning, critical, maintenance.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Only the service of this name.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only services with this tag (repeat).")
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", help="Only services with KEY=VALUE metadata (repeat)."),
    ] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's services with their health."""
    metadata = _pairs(meta or [], as_json)
    with api(as_json) as c:
        result = c.services.list(
            health=health,
            name=name,
            tags=tag or (),
            metadata=metadata,
            project_id=project,
            page=page,
            limit=limit,
        )
    if as_json:
        listing(_as_page(result), SERVICE_COLUMNS, as_json)
    else:
        print_services(result)


@app.command("show")
def show_(service_id: ServiceArg, as_json: JsonOpt = False) -> None:
    """Show a service: each instance's state, health, check timeline and output."""
    with api(as_json) as c:
        service = c.services.get(service_id)
    if as_json:
        echo_json(service)
    else:
        print_service(service)


@app.command()
def watch(
    health: Annotated[str | None, typer.Option(help="Only services in this health.")] = None,
    project: ProjectOpt = None,
    changes: Annotated[
        int | None, typer.Option(help="Stop after this many changes (default: never).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the services, then again each time their health or instances change."""
    with api(as_json) as c:
        for result in c.services.watch(health=health, project_id=project, max_changes=changes):
            if as_json:
                typer.echo(json.dumps(result.model_dump(mode="json")))
            else:
                stdout().rule(f"index {result.index}")
                print_services(result)


@app.command()
def maintenance(
    service_id: ServiceArg,
    instance_id: Annotated[str, typer.Argument(help="Instance id.", show_default=False)],
    off: Annotated[bool, typer.Option("--off", help="Put the instance back in service.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (shown with its health).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Take an instance out of traffic (or, with --off, put it back)."""
    with api(as_json) as c:
        service = c.services.maintenance(service_id, instance_id, enabled=not off, reason=reason)
    if as_json:
        echo_json(service)
    else:
        print_service(service)


@app.command()
def update(
    service_id: ServiceArg,
    version: Annotated[str | None, typer.Option(help="The service's version.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Its tags (repeat; replaces them).")] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata (repeat; replaces it).")
    ] = None,
    check: Annotated[
        str | None,
        typer.Option(help='The health check as JSON, e.g. \'{"type":"http","path":"/health"}\'.'),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a service's version, tags, metadata or health check."""
    parsed = None
    if check is not None:
        try:
            parsed = json.loads(check)
        except json.JSONDecodeError as exc:
            fail(f"--check is not JSON: {exc}", code=2, as_json=as_json)
    with api(as_json) as c:
        service = c.services.update(
            service_id,
            version=version,
            tags=tag,
            metadata=None if meta is None else _pairs(meta, as_json),
            check=parsed,
        )
    if as_json:
        echo_json(service)
    else:
        print_service(service)


def _pairs(items: list[str], as_json: bool) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{item!r}: expected KEY=VALUE", code=2, as_json=as_json)
        out[key] = value
    return out
