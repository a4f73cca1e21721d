"""`nefos operation ...`: the long actions behind every accepted write."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    api,
    listing,
    show,
    wait_for,
)

app = typer.Typer(
    no_args_is_help=True, help="Operations: follow, wait for and cancel long actions."
)

OperationArg = Annotated[str, typer.Argument(help="Operation id.", show_default=False)]

OPERATION_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("KIND", "kind"),
    ("RESOURCE", "resource_id"),
    ("STATUS", "status"),
    ("PROGRESS", lambda op: f"{op.progress}%"),
    ("CREATED", "created_at"),
]


@app.command("list")
def list_(
    resource: Annotated[
        str | None, typer.Option("--resource", help="Only this resource's operations.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: pending, running, succeeded, failed, cancelled."),
    ] = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List operations in the projects you can see, newest first."""
    with api(as_json) as c:
        ops = c.operations.list(
            resource_id=resource, status=status, page=page, cursor=cursor, limit=limit
        )
    listing(ops, OPERATION_COLUMNS, as_json, empty="No operations.")


@app.command("show")
def show_(operation_id: OperationArg, as_json: JsonOpt = False) -> None:
    """Show an operation: its status, progress, result or error."""
    with api(as_json) as c:
        op = c.operations.get(operation_id)
    show(op, as_json)


@app.command()
def cancel(operation_id: OperationArg, as_json: JsonOpt = False) -> None:
    """Cancel a pending operation (one that runs already cannot be)."""
    with api(as_json) as c:
        op = c.operations.cancel(operation_id)
    show(op, as_json)


@app.command()
def wait(
    operation_id: OperationArg,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait before giving up (it goes on).")
    ] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Wait for an operation to end; exit 1 with its error if it fails."""
    with api(as_json) as c:
        op = wait_for(c, operation_id, as_json, timeout=timeout)
    show(op, as_json)
