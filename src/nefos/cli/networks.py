"""`nefos network ...`: isolated networks that VMs join."""

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
    echo_json,
    listing,
    show,
    stdout,
    wait_for,
)
from nefos.cli.vms import ProjectOpt

app = typer.Typer(
    no_args_is_help=True, help="Networks: isolated networks for VMs (`vm create --network`)."
)

NetworkArg = Annotated[str, typer.Argument(help="Network id.", show_default=False)]

NETWORK_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("CIDR", "cidr"),
    ("STATUS", "status"),
    ("CREATED", "created_at"),
]


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a project's networks."""
    with api(as_json) as c:
        rows = c.networks.list(
            status=status, project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(rows, NETWORK_COLUMNS, as_json, empty="No networks.")


@app.command("show")
def show_(network_id: NetworkArg, as_json: JsonOpt = False) -> None:
    """Show a network."""
    with api(as_json) as c:
        network = c.networks.get(network_id)
    show(network, as_json)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name, unique in the project.", show_default=False)],
    cidr: Annotated[
        str | None,
        typer.Option(help="An IPv4 network with DHCP, such as 10.20.0.0/24 (default: none)."),
    ] = None,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a network (at once: each host makes it when its first VM joins)."""
    with api(as_json) as c:
        network = c.networks.create(name, cidr=cidr, project_id=project)
    show(network, as_json)


@app.command("rm")
def rm(
    network_id: NetworkArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete a network (refused while a VM uses it)."""
    if not yes:
        typer.confirm(f"Delete network {network_id}?", abort=True)
    with api(as_json) as c:
        op = c.networks.delete(network_id)
        if not wait:
            if as_json:
                echo_json(
                    {
                        "message": "Network deletion accepted",
                        "network_id": network_id,
                        "operation": op.model_dump(),
                    }
                )
            else:
                stdout().print(
                    f"Network {network_id} deletion accepted: operation {op.id}\n"
                    f"Follow it with: nefos operation wait {op.id}"
                )
            return
        final = wait_for(c, op.id, as_json)
    if as_json:
        echo_json(
            {
                "message": "Network deleted",
                "network_id": network_id,
                "operation": final.model_dump(mode="json"),
            }
        )
    else:
        stdout().print(f"Network {network_id} deleted.")
