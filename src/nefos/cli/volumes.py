"""`nefos volume ...`: data disks for VMs."""

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
    no_args_is_help=True, help="Volumes: data disks to attach to VMs, grow and remove."
)

VolumeArg = Annotated[str, typer.Argument(help="Volume id.", show_default=False)]

VOLUME_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("SIZE", lambda v: f"{v.size_gb} GB"),
    ("STATUS", "status"),
    ("VM", "vm_id"),
    ("DEVICE", "device"),
]


@app.command("list")
def list_(
    vm: Annotated[str | None, typer.Option("--vm", help="Only those attached to this VM.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status: available, in-use, error, ...")
    ] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's volumes."""
    with api(as_json) as c:
        rows = c.volumes.list(
            vm_id=vm, status=status, project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(rows, VOLUME_COLUMNS, as_json, empty="No volumes.")


@app.command("show")
def show_(volume_id: VolumeArg, as_json: JsonOpt = False) -> None:
    """Show a volume: its size, status, VM and device."""
    with api(as_json) as c:
        volume = c.volumes.get(volume_id)
    show(volume, as_json)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name, unique in the project.", show_default=False)],
    size: Annotated[
        int, typer.Option("--size", min=1, max=65_536, help="Size in GB.", show_default=False)
    ],
    vm: Annotated[
        str | None, typer.Option("--vm", help="Make it on this VM's host and attach it.")
    ] = None,
    project: ProjectOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a blank volume (attached to --vm if given)."""
    with api(as_json) as c:
        accepted = c.volumes.create(name, size_gb=size, vm_id=vm, project_id=project)
        report_accepted(
            c, accepted, "volume", wait, as_json, fetch=lambda: c.volumes.get(accepted.volume_id)
        )


@app.command()
def attach(
    volume_id: VolumeArg, vm_id: VmArg, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Attach a volume to a VM on the same host (live if it runs)."""
    with api(as_json) as c:
        accepted = c.volumes.attach(volume_id, vm_id)
        report_accepted(
            c, accepted, "volume", wait, as_json, fetch=lambda: c.volumes.get(volume_id)
        )


@app.command()
def detach(volume_id: VolumeArg, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Detach a volume from its VM."""
    with api(as_json) as c:
        accepted = c.volumes.detach(volume_id)
        report_accepted(
            c, accepted, "volume", wait, as_json, fetch=lambda: c.volumes.get(volume_id)
        )


@app.command()
def resize(
    volume_id: VolumeArg,
    size: Annotated[
        int,
        typer.Argument(min=1, max=65_536, help="New size in GB (only grows).", show_default=False),
    ],
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Grow a volume."""
    with api(as_json) as c:
        accepted = c.volumes.resize(volume_id, size)
        report_accepted(
            c, accepted, "volume", wait, as_json, fetch=lambda: c.volumes.get(volume_id)
        )


@app.command("rm")
def rm(
    volume_id: VolumeArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete a volume (refused while attached)."""
    if not yes:
        typer.confirm(f"Delete volume {volume_id}?", abort=True)
    with api(as_json) as c:
        accepted = c.volumes.delete(volume_id)
        report_accepted(
            c, accepted, "volume", wait, as_json, fetch=None, gone=f"Volume {volume_id} deleted."
        )
