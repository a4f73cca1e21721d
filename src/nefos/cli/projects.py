"""`nefos project ...`: projects and their quotas."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import (
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    YesOpt,
    api,
    done,
    listing,
    show,
    stdout,
)
from nefos.sdk import NOT_GIVEN, NotGiven

app = typer.Typer(no_args_is_help=True, help="Projects and their quotas.")

ProjectArg = Annotated[str, typer.Argument(help="Project id.", show_default=False)]
DescriptionOpt = Annotated[str | None, typer.Option(help="Free text.")]

PROJECT_COLUMNS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("DEFAULT", "is_default"),
    ("DESCRIPTION", "description"),
]
UNLIMITED = ("unlimited", "none", "null")


def _limit(option: str, value: str | None) -> int | NotGiven | None:
    """A limit option: absent (keep), a number, or 'unlimited' (lift the limit)."""
    if value is None:
        return NOT_GIVEN
    if value.strip().lower() in UNLIMITED:
        return None
    try:
        number = int(value)
    except ValueError:
        raise typer.BadParameter(
            "a whole number, or 'unlimited'", param_hint=f"--{option}"
        ) from None
    if number < 0:
        raise typer.BadParameter("must not be negative", param_hint=f"--{option}")
    return number


LimitValue = Annotated[
    str | None, typer.Option(metavar="N|unlimited", show_default=False, help="New limit.")
]


@app.command("list")
def list_(
    org: Annotated[
        str | None, typer.Option("--org", help="Only this organisation's projects.")
    ] = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the projects you can see."""
    with api(as_json) as c:
        projects = c.projects.list(organisation_id=org, page=page, cursor=cursor, limit=limit)
    listing(projects, PROJECT_COLUMNS, as_json, empty="No projects.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Project name.", show_default=False)],
    description: DescriptionOpt = None,
    org: Annotated[
        str | None,
        typer.Option("--org", help="Organisation id (default: that of your default project)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project."""
    with api(as_json) as c:
        project = c.projects.create(name=name, description=description, organisation_id=org)
    show(project, as_json)


@app.command("show")
def show_(project_id: ProjectArg, as_json: JsonOpt = False) -> None:
    """Show a project."""
    with api(as_json) as c:
        project = c.projects.get(project_id)
    show(project, as_json)


@app.command()
def update(
    project_id: ProjectArg,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    description: DescriptionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rename a project or change its description."""
    if name is None and description is None:
        raise typer.BadParameter("give one to change", param_hint="--name / --description")
    with api(as_json) as c:
        project = c.projects.update(project_id, name=name, description=description)
    show(project, as_json)


@app.command()
def delete(project_id: ProjectArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a project."""
    if not yes:
        typer.confirm(f"Delete project {project_id}?", abort=True)
    with api(as_json) as c:
        result = c.projects.delete(project_id)
    done(result.message, as_json, result)


def _print_quota(quota_limits: dict[str, int | None]) -> None:
    from rich.table import Table

    table = Table("LIMIT", "VALUE")
    for name, value in quota_limits.items():
        table.add_row(name, "unlimited" if value is None else str(value))
    stdout().print(table)


@app.command()
def quota(project_id: ProjectArg, as_json: JsonOpt = False) -> None:
    """Show a project's quotas."""
    with api(as_json) as c:
        result = c.projects.get_quotas(project_id)
    if as_json:
        show(result, True)
    else:
        _print_quota(result.limits.model_dump())


@app.command("set-quota")
def set_quota(
    project_id: ProjectArg,
    instances: LimitValue = None,
    vcpus: LimitValue = None,
    memory_gb: LimitValue = None,
    storage_gb: LimitValue = None,
    containers: LimitValue = None,
    as_json: JsonOpt = False,
) -> None:
    """Change some of a project's quotas; the others keep their values."""
    given = {
        "instances": instances,
        "vcpus": vcpus,
        "memory-gb": memory_gb,
        "storage-gb": storage_gb,
        "containers": containers,
    }
    if all(v is None for v in given.values()):
        raise typer.BadParameter(
            "give at least one limit (e.g. --vcpus 16, --instances unlimited)",
            param_hint="--instances / --vcpus / --memory-gb / --storage-gb / --containers",
        )
    limits = {k: _limit(k, v) for k, v in given.items()}
    with api(as_json) as c:
        result = c.projects.set_quotas(
            project_id,
            instances=limits["instances"],
            vcpus=limits["vcpus"],
            memory_gb=limits["memory-gb"],
            storage_gb=limits["storage-gb"],
            containers=limits["containers"],
        )
    if as_json:
        show(result, True)
    else:
        _print_quota(result.limits.model_dump())
