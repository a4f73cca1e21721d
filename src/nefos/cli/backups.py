"""`nefos backup ...`: full copies of a stopped VM's disks, restored into new VMs."""

from __future__ import annotations

from pathlib import Path
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
from nefos.cli.images import _size
from nefos.cli.vms import CpuOpt, MemoryOpt, ProjectOpt, VmArg, _read, memory_mb
from nefos.cli.vms import _accepted as vm_accepted

app = typer.Typer(
    no_args_is_help=True, help="Backups of stopped VMs: take, restore into a new VM, remove."
)

BackupArg = Annotated[str, typer.Argument(help="Backup id.", show_default=False)]

BACKUP_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("VM", "vm_id"),
    ("STATUS", "status"),
    ("SIZE", lambda b: _size(b.size_bytes)),
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
    """List a project's backups."""
    with api(as_json) as c:
        rows = c.backups.list(
            vm_id=vm, status=status, project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(rows, BACKUP_COLUMNS, as_json, empty="No backups.")


@app.command("show")
def show_(backup_id: BackupArg, as_json: JsonOpt = False) -> None:
    """Show a backup: its VM's sizes and image, host and size."""
    with api(as_json) as c:
        backup = c.backups.get(backup_id)
    show(backup, as_json)


@app.command()
def create(
    vm_id: VmArg,
    name: Annotated[
        str | None, typer.Option(help="Name (default: <vm>-backup).", show_default=False)
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up a stopped VM's disks (kept after the VM is deleted)."""
    with api(as_json) as c:
        accepted = c.backups.create(vm_id, name=name)
        report_accepted(
            c, accepted, "backup", wait, as_json, fetch=lambda: c.backups.get(accepted.backup_id)
        )


@app.command()
def restore(
    backup_id: BackupArg,
    name: Annotated[str, typer.Option("--name", help="The new VM's name.", show_default=False)],
    cpu: CpuOpt = None,
    memory: MemoryOpt = None,
    user_data_file: Annotated[
        Path | None,
        typer.Option("--user-data-file", help="cloud-init user data (#cloud-config or a script)."),
    ] = None,
    network: Annotated[
        str | None, typer.Option("--network", help="A network id of the project.")
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup into a new VM (the backup's sizes unless given)."""
    mb = memory_mb(memory) if memory is not None else None
    user_data = _read(user_data_file, "--user-data-file") if user_data_file else None
    with api(as_json) as c:
        accepted = c.backups.restore(
            backup_id,
            name=name,
            cpu_cores=cpu,
            memory_mb=mb,
            user_data=user_data,
            network_id=network,
        )
        vm_accepted(c, accepted, wait, as_json)


@app.command("rm")
def rm(
    backup_id: BackupArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete a backup."""
    if not yes:
        typer.confirm(f"Delete backup {backup_id}?", abort=True)
    with api(as_json) as c:
        accepted = c.backups.delete(backup_id)
        report_accepted(
            c, accepted, "backup", wait, as_json, fetch=None, gone=f"Backup {backup_id} deleted."
        )
