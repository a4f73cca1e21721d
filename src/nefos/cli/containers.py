"""`nefos container ...`: containers, their replicas, endpoints and logs."""

from __future__ import annotations

import shutil
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    Steps,
    WaitOpt,
    YesOpt,
    api,
    echo_json,
    listing,
    stdout,
    wait_for,
)
from nefos.cli._metrics import series_table, usage_cpu, usage_memory, values_of
from nefos.cli._terminal import attach
from nefos.schemas.compute import (
    ContainerAccepted,
    ContainerPublic,
    OperationPublic,
    PublishedEndpoint,
)
from nefos.sdk import NOT_GIVEN, Client

app = typer.Typer(no_args_is_help=True, help="Containers: create, scale, follow and remove them.")

ContainerArg = Annotated[str, typer.Argument(help="Container id.", show_default=False)]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="Project id (default: your default project).")
]

ANY_ADDRESS = ("", "0.0.0.0", "::")  # noqa: S104 (names the wildcard, binds nothing)


def _running(c: ContainerPublic) -> str:
    running = sum(1 for r in c.replica_states if r.state == "running")
    return f"{running}/{c.replicas}"


CONTAINER_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("IMAGE", "image"),
    ("STATUS", "status"),
    ("RUNNING", _running),
    ("CPU", usage_cpu),
    ("MEM", usage_memory),
    ("PORTS", "ports"),
]


def endpoint_address(e: PublishedEndpoint) -> str:
    """``host:port`` to reach a published port: the address it is bound to, or
    (bound to every address) the host's name."""
    host = e.host_ip if e.host_ip not in ANY_ADDRESS else (e.host or e.host_ip or "?")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{e.host_port}"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def print_container(c: ContainerPublic) -> None:
    """Status, endpoints (host:port) and metrics, for people."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    status = c.status + (f" ({c.status_reason})" if c.status_reason else "")
    rows: list[tuple[str, str]] = [
        ("id", c.id),
        ("name", c.name),
        ("project", c.project_id),
        ("image", c.image),
        ("status", status),
        ("replicas", f"{_running(c)} running"),
        ("ports", ", ".join(c.ports) or "-"),
        ("command", " ".join(c.command) if c.command else "-"),
        ("resources", ", ".join(f"{k}={v}" for k, v in c.resources.items()) or "-"),
        ("environment", ", ".join(c.environment) or "-"),
        ("created", c.created_at.strftime("%Y-%m-%d %H:%M:%SZ")),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    out = stdout()
    out.print(table)
    if c.endpoints:
        out.print("[bold]endpoints[/]")
        for e in c.endpoints:
            out.print(
                f"  {escape(endpoint_address(e))} -> {e.container_port}/{escape(e.protocol)} "
                f"(replica {e.replica})"
            )
    else:
        out.print("[bold]endpoints[/] -")
    if len(c.replica_states) > 1 or any(r.state != "running" for r in c.replica_states):
        out.print("[bold]replica states[/]")
        for r in c.replica_states:
            out.print(f"  {r.slot}: {escape(r.state)} on host {r.host_id}")
    m = c.metrics
    if m is None:
        out.print("[bold]metrics[/] - (nothing running, or its host does not answer)")
    else:
        out.print(
            f"[bold]metrics[/] cpu {m.cpu_usage:g}% of limit, memory {m.memory_usage:g}% of "
            f"limit ({_bytes(m.memory_bytes)}), network {escape(m.network_io)} "
            f"(in {_bytes(m.net_rx_bytes)}, out {_bytes(m.net_tx_bytes)}), "
            f"{m.replicas_reporting} replica(s) reporting"
        )


def _environment(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def _replicas_ready(c: Client, container_id: str) -> Steps:
    """--wait's count for a create, start or scale: replicas running of those wanted."""

    def steps(op: OperationPublic) -> tuple[int, int, str]:
        container = c.containers.get(container_id)
        running = sum(1 for r in container.replica_states if r.state == "running")
        return min(running, container.replicas), container.replicas, "replicas ready"

    return steps


def _accepted(
    c: Client,
    accepted: ContainerAccepted,
    wait: bool,
    as_json: bool,
    *,
    gone: bool = False,
    stopping: bool = False,
) -> None:
    """Report a write: what was accepted, or (--wait) how it ended."""
    if not wait:
        if as_json:
            echo_json(accepted)
            return
        op = accepted.operation
        stdout().print(
            f"{escape(accepted.message)}: {escape(accepted.container.name)} "
            f"({accepted.container_id}), status {escape(accepted.container.status)}\n"
            f"Operation {op.id}: follow it with `nefos operation wait {op.id}`"
        )
        return
    final = wait_for(
        c,
        accepted.operation.id,
        as_json,
        steps=None if gone or stopping else _replicas_ready(c, accepted.container_id),
    )
    container = None if gone else c.containers.get(accepted.container_id)
    if as_json:
        data: dict[str, Any] = accepted.model_dump(mode="json")
        data["container"] = container.model_dump(mode="json") if container else None
        data["operation"] = final.model_dump(mode="json")
        echo_json(data)
    elif container is None:
        stdout().print(f"Container {accepted.container_id} deleted.")
    else:
        print_container(container)


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="Only this status: running, stopped, error, ...")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only those this user made.")] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's containers."""
    with api(as_json) as c:
        rows = c.containers.list(
            status=status, user_id=user, project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(rows, CONTAINER_COLUMNS, as_json, empty="No containers.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name, unique in the project.", show_default=False)],
    image: Annotated[
        str, typer.Option("--image", "-i", help="Image, such as nginx:alpine.", show_default=False)
    ],
    port: Annotated[
        list[str] | None,
        typer.Option(
            "--port",
            "-p",
            help="Publish a port: 8080, 8081:80 (host:container) or 127.0.0.1:8082:80/tcp. "
            "Repeat the option for more.",
            show_default=False,
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", help="KEY=VALUE (repeat the option for more).", show_default=False
        ),
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU cores per replica, e.g. 0.5.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per replica, e.g. 64m, 1g.")] = None,
    storage: Annotated[str | None, typer.Option(help="Storage per replica, e.g. 1Gi.")] = None,
    replicas: Annotated[int, typer.Option(min=1, max=64, help="Number of replicas.")] = 1,
    project: ProjectOpt = None,
    command: Annotated[
        str | None, typer.Option(help='The command to run, split like a shell: "httpd -f".')
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create and start a container."""
    environment = _environment(env or [])
    with api(as_json) as c:
        accepted = c.containers.create(
            name=name,
            image=image,
            ports=port or None,
            environment=environment or None,
            cpu=cpu,
            memory=memory,
            storage=storage,
            command=command,
            replicas=replicas,
            project_id=project,
        )
        _accepted(c, accepted, wait, as_json)


@app.command("show")
def show_(container_id: ContainerArg, as_json: JsonOpt = False) -> None:
    """Show a container: its status, endpoints (host:port) and metrics."""
    with api(as_json) as c:
        container = c.containers.get(container_id)
    if as_json:
        echo_json(container)
    else:
        print_container(container)


@app.command()
def start(container_id: ContainerArg, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Start a stopped container."""
    with api(as_json) as c:
        _accepted(c, c.containers.start(container_id), wait, as_json)


@app.command()
def stop(container_id: ContainerArg, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Stop a container (its replicas are kept, to start again)."""
    with api(as_json) as c:
        _accepted(c, c.containers.stop(container_id), wait, as_json, stopping=True)


@app.command()
def scale(
    container_id: ContainerArg,
    replicas: Annotated[int, typer.Argument(help="The new number of replicas.")],
    strategy: Annotated[
        str,
        typer.Option(
            help="rolling: start the new replicas before removing any; recreate: remove "
            "every old one first."
        ),
    ] = "rolling",
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a container's number of replicas."""
    with api(as_json) as c:
        accepted = c.containers.scale(container_id, replicas=replicas, strategy=strategy)
        _accepted(c, accepted, wait, as_json)


@app.command()
def update(
    container_id: ContainerArg,
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="The new image.", show_default=False)
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            help="KEY=VALUE: the new environment, whole (repeat the option for more).",
            show_default=False,
        ),
    ] = None,
    command: Annotated[
        str | None, typer.Option(help='The new command, split like a shell: "httpd -f".')
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU cores per replica, e.g. 0.5.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per replica, e.g. 64m, 1g.")] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Roll a container to a new image, environment, command or size: one replica at
    a time, each new one passing the service's check before an old one goes; rolled
    back on its own if one does not."""
    environment = _environment(env) if env is not None else None
    with api(as_json) as c:
        result = c.containers.update(
            container_id,
            image=image,
            environment=environment,
            cpu=cpu,
            memory=memory,
            command=NOT_GIVEN if command is None else command,
        )
        if isinstance(result, ContainerAccepted):
            _accepted(c, result, wait, as_json)
        elif as_json:
            echo_json(result)
        else:
            stdout().print("Nothing to change.")
            print_container(result)


@app.command("rm")
def rm(
    container_id: ContainerArg,
    yes: YesOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a container and every replica."""
    if not yes:
        typer.confirm(f"Delete container {container_id}?", abort=True)
    with api(as_json) as c:
        _accepted(c, c.containers.delete(container_id), wait, as_json, gone=True)


@app.command()
def logs(
    container_id: ContainerArg,
    tail: Annotated[int, typer.Option(min=1, max=10_000, help="Lines per replica.")] = 100,
    replica: Annotated[
        int | None, typer.Option(min=0, help="Only this replica (its slot number).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Lines from then on (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Lines before then (ISO 8601).")] = None,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", help="Each line after the time it was written.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Print the lines written from now on, as they come."),
    ] = False,
    seconds: Annotated[int, typer.Option(min=1, max=300, help="How long to follow.")] = 60,
    as_json: JsonOpt = False,
) -> None:
    """Print the last lines of a container's output (stdout and stderr); with
    --follow, the lines its replicas write from now (or --since) on, one a line."""
    if follow and (until or timestamps):
        raise typer.BadParameter(
            "a followed log has no end, and each line has its time already",
            param_hint="--until/--timestamps",
        )
    with api(as_json) as c:
        if follow:
            for out in c.containers.follow(
                container_id, seconds=seconds, since=since, replica=replica
            ):
                typer.echo(
                    out.model_dump_json()
                    if as_json
                    else f"[replica {out.replica}] {out.time} {out.line}"
                )
            return
        result = c.containers.logs(
            container_id,
            tail=tail,
            replica=replica,
            since=since,
            until=until,
            timestamps=timestamps,
        )
    if as_json:
        echo_json(result)
    elif result.logs:
        typer.echo(result.logs, nl=not result.logs.endswith("\n"))


@app.command("exec")
def exec_(
    container_id: ContainerArg,
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command and its arguments (after --; default /bin/sh)."),
    ] = None,
    replica: Annotated[
        int | None, typer.Option(min=0, help="This replica (its slot; default the first running).")
    ] = None,
) -> None:
    """Open a terminal in a running replica: interactive when stdin is a terminal,
    otherwise stdin is typed into it. Exits with the command's exit code.

    nefos container exec CID            (a shell)
    nefos container exec CID -- ls -l /
    """
    with api(False) as c:
        size = shutil.get_terminal_size()
        with c.containers.terminal(
            container_id, replica=replica, command=command, cols=size.columns, rows=size.lines
        ) as term:
            code = attach(term)
    raise typer.Exit(code if code is not None else 1)


@app.command()
def metrics(
    container_id: ContainerArg,
    period: Annotated[
        str, typer.Option("--period", help="How far back: 1h, 24h, 7d or 30d.")
    ] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """The container's cpu and memory (% of its limits) and network (bytes per
    second), with a sparkline a metric."""
    with api(as_json) as c:
        data = c.containers.metrics(container_id, period=period)
    if as_json:
        echo_json(data)
        return
    m = data.metrics
    series_table(
        {
            "cpu": values_of(m.cpu),
            "memory": values_of(m.memory),
            "net_rx_bps": [float(p.bytes_in) for p in m.network],
            "net_tx_bps": [float(p.bytes_out) for p in m.network],
        },
        title=f"Container {data.container_id}: last {data.period} ({data.resolution})",
    )
