"""`nefos vm ...`: virtual machines, their power state, sizes and serial console."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    WaitOpt,
    YesOpt,
    api,
    echo_json,
    listing,
    show,
    stdout,
    wait_for,
)
from nefos.cli._metrics import series_table, usage_cpu, usage_memory, values_of
from nefos.cli._terminal import DETACH, attach
from nefos.schemas.vms import VmAccepted
from nefos.sdk import Client

app = typer.Typer(no_args_is_help=True, help="Virtual machines: create, power, resize, remove.")

VmArg = Annotated[str, typer.Argument(help="VM id.", show_default=False)]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="Project id (default: your default project).")
]
CpuOpt = Annotated[int | None, typer.Option("--cpu", min=1, max=256, help="vCPUs.")]
MemoryOpt = Annotated[
    str | None, typer.Option("--memory", help="Memory with its unit: 512m, 1g, 1.5g.")
]
MemoryGbOpt = Annotated[
    float | None, typer.Option("--memory-gb", min=0.001, help="Memory in GB (instead of --memory).")
]

VM_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("CPU", "cpu_cores"),
    ("MEMORY", lambda v: f"{v.memory_mb} MiB"),
    ("CPU USE", usage_cpu),
    ("MEM USE", usage_memory),
    ("DISK", lambda v: f"{v.storage_gb} GB"),
    ("OS", lambda v: f"{v.os_type} {v.os_version}".strip() or "-"),
    ("IP", "ip_address"),
]

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mg])(?:i?b)?$", re.IGNORECASE)


def memory_mb(value: str) -> int:
    """``512m`` -> 512, ``1g`` -> 1024, ``1.5g`` -> 1536 (MiB); a bare number is
    refused, as it would be ambiguous."""
    match = _SIZE.match(value.strip())
    if not match:
        raise typer.BadParameter(
            f"{value!r}: a size with its unit, such as 512m or 1g", param_hint="--memory"
        )
    number, unit = float(match[1]), match[2].lower()
    mb = number * 1024 if unit == "g" else number
    if mb != int(mb) or mb < 1:
        raise typer.BadParameter(f"{value!r}: a whole number of MiB", param_hint="--memory")
    return int(mb)


def _memory(memory: str | None, memory_gb: float | None) -> dict[str, Any]:
    if memory is not None and memory_gb is not None:
        raise typer.BadParameter("give --memory or --memory-gb, not both", param_hint="--memory")
    if memory is not None:
        return {"memory_mb": memory_mb(memory)}
    return {"memory_gb": memory_gb}


def ssh_keys(files: list[Path]) -> list[str]:
    """The public key lines of each file (blank lines and # comments skipped)."""
    keys: list[str] = []
    for file in files:
        for line in _read(file, "--ssh-key-file").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return keys


def _read(file: Path, option: str) -> str:
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}", param_hint=option) from None


def _accepted(
    c: Client, accepted: VmAccepted, wait: bool, as_json: bool, *, gone: bool = False
) -> None:
    """Report a write: what was accepted, or (--wait) how it ended."""
    if not wait:
        if as_json:
            echo_json(accepted)
            return
        op = accepted.operation
        stdout().print(
            f"{escape(accepted.message)}: {escape(accepted.vm.name)} ({accepted.vm_id}), "
            f"status {escape(accepted.vm.status)}\n"
            f"Operation {op.id}: follow it with `nefos operation wait {op.id}`"
        )
        return
    final = wait_for(c, accepted.operation.id, as_json)
    vm = None if gone else c.vms.get(accepted.vm_id)
    if as_json:
        data: dict[str, Any] = accepted.model_dump(mode="json")
        data["vm"] = vm.model_dump(mode="json") if vm else None
        data["operation"] = final.model_dump(mode="json")
        echo_json(data)
    elif vm is None:
        stdout().print(f"VM {accepted.vm_id} deleted.")
    else:
        show(vm, as_json)


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="Only this status: running, stopped, error, ...")
    ] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's VMs."""
    with api(as_json) as c:
        rows = c.vms.list(status=status, project_id=project, page=page, cursor=cursor, limit=limit)
    listing(rows, VM_COLUMNS, as_json, empty="No VMs.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name, unique in the project.", show_default=False)],
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="Image id (see `nefos image list`).")
    ] = None,
    os_type: Annotated[
        str | None,
        typer.Option("--os-type", help="Instead of --image: the newest image of this OS."),
    ] = None,
    os_version: Annotated[
        str | None, typer.Option("--os-version", help="With --os-type: this version.")
    ] = None,
    cpu: Annotated[int, typer.Option("--cpu", min=1, max=256, help="vCPUs.")] = 1,
    memory: MemoryOpt = None,
    memory_gb: MemoryGbOpt = None,
    disk: Annotated[int, typer.Option("--disk", min=0, help="Root disk size in GB.")] = 10,
    user_data_file: Annotated[
        Path | None,
        typer.Option("--user-data-file", help="cloud-init user data (#cloud-config or a script)."),
    ] = None,
    ssh_key_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--ssh-key-file",
            help="A file of OpenSSH public keys (repeat the option for more).",
            show_default=False,
        ),
    ] = None,
    network: Annotated[
        str | None, typer.Option("--network", help="A network id of the project.")
    ] = None,
    service_port: Annotated[
        int | None,
        typer.Option(
            "--service-port",
            min=1,
            max=65535,
            help="The TCP port the guest serves on: the VM becomes a service "
            "(needs --network with a subnet).",
        ),
    ] = None,
    project: ProjectOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create and boot a VM (1 GB of memory unless --memory or --memory-gb)."""
    if not image and not os_type:
        raise typer.BadParameter("give --image, or --os-type", param_hint="--image")
    sizes = _memory(memory, memory_gb)
    user_data = _read(user_data_file, "--user-data-file") if user_data_file else None
    keys = ssh_keys(ssh_key_file or [])
    with api(as_json) as c:
        accepted = c.vms.create(
            name,
            image_id=image,
            os_type=os_type,
            os_version=os_version,
            cpu_cores=cpu,
            storage_gb=disk,
            user_data=user_data,
            ssh_keys=keys,
            network_id=network,
            service_port=service_port,
            project_id=project,
            **sizes,
        )
        _accepted(c, accepted, wait, as_json)


@app.command("show")
def show_(vm_id: VmArg, as_json: JsonOpt = False) -> None:
    """Show a VM: its status, sizes, image, host and address."""
    with api(as_json) as c:
        vm = c.vms.get(vm_id)
    show(vm, as_json)


@app.command()
def start(vm_id: VmArg, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Boot a stopped VM."""
    with api(as_json) as c:
        _accepted(c, c.vms.start(vm_id), wait, as_json)


@app.command()
def stop(
    vm_id: VmArg,
    force: Annotated[
        bool, typer.Option("--force", help="Power off at once, without asking the guest.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0, max=3600, help="Seconds the guest has to shut down before it is powered off."
        ),
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Shut a VM down (the ACPI power button; --force: power off at once)."""
    with api(as_json) as c:
        _accepted(c, c.vms.stop(vm_id, force=force, timeout=timeout), wait, as_json)


@app.command()
def reboot(
    vm_id: VmArg,
    hard: Annotated[
        bool, typer.Option("--hard", help="Reset at once instead of asking the guest.")
    ] = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Reboot a running VM."""
    with api(as_json) as c:
        _accepted(c, c.vms.reboot(vm_id, hard=hard), wait, as_json)


@app.command()
def resize(
    vm_id: VmArg,
    cpu: CpuOpt = None,
    memory: MemoryOpt = None,
    memory_gb: MemoryGbOpt = None,
    disk: Annotated[
        int | None, typer.Option("--disk", min=0, help="Root disk size in GB (only grows).")
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a stopped VM's vCPUs, memory or disk."""
    sizes = _memory(memory, memory_gb)
    with api(as_json) as c:
        result = c.vms.resize(vm_id, cpu_cores=cpu, storage_gb=disk, **sizes)
        if isinstance(result, VmAccepted):
            _accepted(c, result, wait, as_json)
        elif as_json:
            echo_json(result)
        else:
            stdout().print(f"VM {result.id} already has these sizes.")


@app.command()
def serve(
    vm_id: VmArg,
    port: Annotated[
        int | None,
        typer.Argument(help="The TCP port the guest serves on.", min=1, max=65535),
    ] = None,
    off: Annotated[
        bool, typer.Option("--off", help="End the VM's service (it stays as it is).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a VM a service on PORT (checked, with an endpoint: `nefos service show`),
    or end its service with --off."""
    if (port is None) == (not off):
        raise typer.BadParameter("give a PORT, or --off", param_hint="PORT")
    with api(as_json) as c:
        result = c.vms.update(vm_id, service_port=None if off else port)
    if as_json:
        echo_json(result)
    elif off:
        stdout().print(f"VM {vm_id} is no longer a service.")
    else:
        stdout().print(
            f"VM {vm_id} serves on port {port}: see [bold]nefos service show {vm_id}[/bold]."
        )


@app.command("rm")
def rm(vm_id: VmArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a VM and its disks (attached volumes are detached and kept)."""
    if not yes:
        typer.confirm(f"Delete VM {vm_id}?", abort=True)
    with api(as_json) as c:
        _accepted(c, c.vms.delete(vm_id), wait, as_json, gone=True)


@app.command()
def console(
    vm_id: VmArg,
    tail: Annotated[int, typer.Option(min=1, max=10_000, help="Lines to print.")] = 200,
    attach_: Annotated[
        bool,
        typer.Option(
            "--attach", "-a", help="Attach to the console, interactive (Ctrl-] leaves it)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --attach: take over a console open elsewhere.")
    ] = False,
    linger: Annotated[
        float,
        typer.Option(
            "--linger",
            min=0,
            max=600,
            help="With --attach and stdin not a terminal: seconds to print the answer "
            "after the input ends.",
        ),
    ] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Print the last lines of a VM's serial console (boot messages, cloud-init), or
    attach to it.

    nefos vm console VM                       (the log)
    nefos vm console VM --attach              (type into it; Ctrl-] leaves)
    echo 'uname -a' | nefos vm console VM -a  (type stdin, print the answer)
    """
    if attach_:
        if as_json:
            raise typer.BadParameter("--attach prints the console itself, not JSON")
        with api(False) as c, c.vms.attach_console(vm_id, force=force) as term:
            if sys.stdin.isatty():
                typer.echo("Attached to the serial console; Ctrl-] leaves it.", err=True)
            attach(term, detach=DETACH, linger=linger)
        return
    with api(as_json) as c:
        text = c.vms.console(vm_id, tail=tail)
    if as_json:
        echo_json({"vm_id": vm_id, "console": text, "lines": len(text.splitlines())})
    elif text:
        typer.echo(text, nl=not text.endswith("\n"))


@app.command()
def metrics(
    vm_id: VmArg,
    hours: Annotated[
        int, typer.Option("--hours", min=1, max=9600, help="Hours back from now.")
    ] = 24,
    as_json: JsonOpt = False,
) -> None:
    """The VM's cpu, memory, network and disk over the last hours, with a sparkline
    a metric."""
    with api(as_json) as c:
        data = c.monitoring.vm_metrics(vm_id, hours=hours)
    if as_json:
        echo_json(data)
        return
    series_table(
        {name: values_of(points) for name, points in data.metrics.items()},
        title=f"VM {data.vm_id}: last {data.hours} h ({data.resolution})",
    )
