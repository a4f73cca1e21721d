"""`nefos snapshot ...`: snapshots of a stopped VM's disks."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    WaitOpt,
    YesOpt,
    api,
    listing,
    report_accepted,
    show,
)
from nefos.cli.vms import ProjectOpt, VmArg

app = typer.Typer(
    no_args_is_help=True, help="Snapshots of a stopped VM's disks: take, restore, remove."
)

SnapshotArg = Annotated[str, typer.Argument(help="Snapshot id.", show_default=False)]

SNAPSHOT_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("VM", "vm_id"),
    ("STATUS", "status"),
    ("CREATED", "created_at"),
]


@app.command("list")
def list_(
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM's.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status: available, error, ...")
    ] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's snapshots."""
    with api(as_json) as c:
        rows = c.snapshots.list(
            vm_id=vm, status=status, project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(rows, SNAPSHOT_COLUMNS, as_json, empty="No snapshots.")


@app.command("show")
def show_(snapshot_id: SnapshotArg, as_json: JsonOpt = False) -> None:
    """Show a snapshot."""
    with api(as_json) as c:
        snapshot = c.snapshots.get(snapshot_id)
    show(snapshot, as_json)


@app.command()
def create(
    vm_id: VmArg,
    name: Annotated[
        str | None, typer.Option(help="Name (default: <vm>-snap-<n>).", show_default=False)
    ] = None,
    description: Annotated[str, typer.Option(help="A description.")] = "",
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Snapshot a stopped VM's disks (its root disk and attached volumes)."""
    with api(as_json) as c:
        accepted = c.snapshots.create(vm_id, name=name, description=description)
        report_accepted(
            c,
            accepted,
            "snapshot",
            wait,
            as_json,
            fetch=lambda: c.snapshots.get(accepted.snapshot_id),
        )


@app.command()
def restore(snapshot_id: SnapshotArg, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Revert the (stopped) VM's disks to the snapshot; its sizes stay as they are."""
    with api(as_json) as c:
        accepted = c.snapshots.restore(snapshot_id)
        report_accepted(
            c, accepted, "snapshot", wait, as_json, fetch=lambda: c.snapshots.get(snapshot_id)
        )


@app.command("rm")
def rm(
    snapshot_id: SnapshotArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete a snapshot."""
    if not yes:
        typer.confirm(f"Delete snapshot {snapshot_id}?", abort=True)
    with api(as_json) as c:
        accepted = c.snapshots.delete(snapshot_id)
        report_accepted(
            c,
            accepted,
            "snapshot",
            wait,
            as_json,
            fetch=None,
            gone=f"Snapshot {snapshot_id} deleted.",
        )
