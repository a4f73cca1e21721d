"""`nefos host ...`: the hosts compute runs on (platform admins)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    WaitOpt,
    YesOpt,
    api,
    done,
    echo_json,
    listing,
    show,
    stdout,
    wait_for,
)
from nefos.cli._metrics import series_table, values_of
from nefos.schemas.compute import HostPublic

app = typer.Typer(no_args_is_help=True, help="Hosts: the machines containers and VMs run on.")

HostArg = Annotated[str, typer.Argument(help="Host id.", show_default=False)]


def _cpu(h: HostPublic) -> str:
    return f"{h.used.cpu_cores:g}/{h.cpu_cores}"


def _memory(h: HostPublic) -> str:
    return f"{h.used.memory_gb:g}/{h.memory_gb:g}"


def _instances(h: HostPublic) -> str:
    limit = "" if h.max_instances is None else f"/{h.max_instances}"
    return f"{h.used.instances}{limit}"


HOST_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("HOSTNAME", "hostname"),
    ("DRIVER", "driver"),
    ("STATUS", "status"),
    ("CPU USED/TOTAL", _cpu),
    ("MEMORY GB", _memory),
    ("INSTANCES", _instances),
]


@app.command("list")
def list_(
    page: PageOpt = None, cursor: CursorOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False
) -> None:
    """List the hosts, their state and what they carry."""
    with api(as_json) as c:
        hosts = c.hosts.list(page=page, cursor=cursor, limit=limit)
    listing(hosts, HOST_COLUMNS, as_json, empty="No hosts: add one with `nefos host add`.")


@app.command()
def add(
    hostname: Annotated[str, typer.Argument(help="A unique name for the host.")],
    driver: Annotated[
        str | None, typer.Option(help="docker, libvirt or sim (default: from --hypervisor).")
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(
            help="Where Nefos reaches it: unix:///run/podman/podman.sock, tcp://10.0.0.5:2376, "
            "qemu+ssh://root@10.0.0.6/system (default: from --ip)."
        ),
    ] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="The host's IP address.")] = None,
    cpu_cores: Annotated[
        int | None, typer.Option(min=1, help="CPU cores, used while it cannot be reached.")
    ] = None,
    memory_gb: Annotated[
        float | None, typer.Option(min=0.001, help="Memory (GB), used while unreachable.")
    ] = None,
    storage_gb: Annotated[
        int | None, typer.Option(min=0, help="Storage (GB), used while unreachable.")
    ] = None,
    hypervisor: Annotated[str | None, typer.Option(help="kvm, qemu, docker or podman.")] = None,
    max_instances: Annotated[
        int | None, typer.Option(min=1, help="Most instances it may carry.")
    ] = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Register it, but give it no work yet.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a host. Nefos connects at once: `active` if it answers, else `offline`."""
    with api(as_json) as c:
        host = c.hosts.register(
            hostname=hostname,
            driver=driver,
            uri=uri,
            ip_address=ip,
            cpu_cores=cpu_cores,
            memory_gb=memory_gb,
            storage_gb=storage_gb,
            hypervisor_type=hypervisor,
            max_instances=max_instances,
            enabled=False if disabled else None,
        )
    show(host, as_json)


@app.command("show")
def show_(host_id: HostArg, as_json: JsonOpt = False) -> None:
    """Show a host: where it is, its state, capacity and use."""
    with api(as_json) as c:
        host = c.hosts.get(host_id)
    show(host, as_json)


@app.command("rm")
def rm(
    host_id: HostArg,
    drain: Annotated[
        bool,
        typer.Option("--drain", help="Move its instances to other hosts first, then remove it."),
    ] = False,
    yes: YesOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a host. One that still carries instances needs --drain."""
    if not yes:
        typer.confirm(f"Remove host {host_id}?", abort=True)
    with api(as_json) as c:
        op = c.hosts.delete(host_id, drain=drain)
        if op is None:
            done(f"Host {host_id} removed.", as_json, None)
            return
        if not wait:
            if as_json:
                echo_json(
                    {"message": "Host draining", "host_id": host_id, "operation": op.model_dump()}
                )
            else:
                stdout().print(
                    f"Host {host_id} draining: operation {op.id}\n"
                    f"Follow it with: nefos operation wait {op.id}"
                )
            return
        final = wait_for(c, op.id, as_json)
    if as_json:
        echo_json(
            {
                "message": "Host removed",
                "host_id": host_id,
                "operation": final.model_dump(mode="json"),
            }
        )
    else:
        stdout().print(f"Host {host_id} drained and removed.")


@app.command()
def stats(as_json: JsonOpt = False) -> None:
    """Capacity and use over every host, by resource class and driver."""
    with api(as_json) as c:
        result = c.hosts.stats()
    if as_json:
        show(result, True)
        return
    out = stdout()
    out.print(
        f"Hosts: {result.active_hosts} active of {result.total_hosts}\n"
        f"CPU cores: {result.used_cpu_cores:g} used of {result.total_cpu_cores}\n"
        f"Memory: {result.used_memory_gb:g} GB used of {result.total_memory_gb:g} GB\n"
        f"Storage: {result.used_storage_gb} GB used of {result.total_storage_gb} GB\n"
        f"Utilisation: {result.utilization_percentage:g}%"
    )
    table = Table("CLASS", "COUNT", "RUNNING", "CPU CORES", "MEMORY GB", "STORAGE GB")
    for name, cls in result.by_class.items():
        table.add_row(
            escape(name),
            str(cls.count),
            str(cls.running),
            f"{cls.cpu_cores:g}",
            f"{cls.memory_gb:g}",
            str(cls.storage_gb),
        )
    out.print(table)
    if result.by_driver:
        drivers = ", ".join(f"{escape(k)}: {v}" for k, v in sorted(result.by_driver.items()))
        out.print(f"Hosts by driver: {drivers}")


@app.command()
def metrics(
    host_id: HostArg,
    hours: Annotated[
        int, typer.Option("--hours", min=1, max=9600, help="Hours back from now.")
    ] = 24,
    as_json: JsonOpt = False,
) -> None:
    """The host's own cpu and memory over the last hours, with a sparkline a metric."""
    with api(as_json) as c:
        data = c.monitoring.host_metrics(host_id, hours=hours)
    if as_json:
        echo_json(data)
        return
    series_table(
        {name: values_of(points) for name, points in data.metrics.items()},
        title=f"Host {data.hostname}: last {data.hours} h ({data.resolution})",
    )
