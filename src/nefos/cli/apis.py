"""`nefos api ...`: deploy APIs, follow their deployments, logs and metrics."""

from __future__ import annotations

import json
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
    stdout,
    wait_for,
)
from nefos.cli._metrics import series_table
from nefos.cli.containers import _environment
from nefos.schemas.apis import ApiAccepted, ApiCallLog, ApiPublic, DeploymentPublic
from nefos.schemas.common import Page
from nefos.sdk import Client

app = typer.Typer(no_args_is_help=True, help="APIs: deploy them, follow their deployments.")

ApiArg = Annotated[str, typer.Argument(help="API id.", show_default=False)]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="Project id (default: your default project).")
]
_HEALTH = {"passing": "green", "warning": "yellow", "critical": "red", "maintenance": "blue"}


def _health(a: ApiPublic) -> str:
    return a.health or "-"


def _deployment(a: ApiPublic) -> str:
    d = a.deployment
    return f"#{d.number} {d.status}" if d else "-"


API_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("SLUG", "slug"),
    ("STATUS", "status"),
    ("HEALTH", _health),
    ("REPLICAS", "replicas"),
    ("DEPLOYMENT", _deployment),
]
DEPLOYMENT_COLUMNS: list[Column] = [
    ("#", "number"),
    ("STATUS", "status"),
    ("IMAGE", "image"),
    ("REPLICAS", "replicas"),
    ("CREATED", "created_at"),
    ("OPERATION", "operation_id"),
]


def print_api(a: ApiPublic) -> None:
    console = stdout()
    colour = _HEALTH.get(a.health or "", "white")
    console.print(
        f"[bold]{escape(a.name)}[/bold] ({a.id})  slug {escape(a.slug)}  "
        f"status {escape(a.status)}  health [{colour}]{escape(a.health or '-')}[/{colour}]"
    )
    console.print(f"image {escape(a.image or '-')}  port {a.port}  replicas {a.replicas}")
    console.print(f"health check {escape(a.health_check_path)}  base path {escape(a.base_path)}")
    if a.endpoint:
        console.print(f"endpoint {escape(a.endpoint)}")
    if a.deployment:
        console.print(f"deployment #{a.deployment.number}: {a.deployment.status}")
    if a.units or a.units_header:
        rules = ", ".join(f"{r.method} {r.path}={r.units}" for r in a.units) or "1 a call"
        header = f"  header {a.units_header}" if a.units_header else ""
        console.print(f"units {escape(rules)}{escape(header)}")


UnitsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--units",
        help="'METHOD /path=N' (or '/path=N', any method; '/v1/*' a prefix): a call's "
        "units, first match wins, else 1 (repeat for more).",
        show_default=False,
    ),
]
UnitsHeaderOpt = Annotated[
    str | None,
    typer.Option(
        "--units-header",
        help="A header of the API's answers whose integer (0-1000) is the call's units.",
        show_default=False,
    ),
]


def _units(rules: list[str]) -> list[dict[str, Any]]:
    """``--units 'POST /v1/x=5'`` -> ``[{"method": "POST", "path": "/v1/x", "units": 5}]``
    (the server checks the rest)."""
    out: list[dict[str, Any]] = []
    for rule in rules:
        where, sep, count = rule.rpartition("=")
        method, _, path = where.strip().rpartition(" ")
        if not sep or not path or not count.strip().isdigit():
            raise typer.BadParameter(f"{rule!r}: expected 'METHOD /path=N'", param_hint="--units")
        out.append({"method": method.strip().upper() or "*", "path": path, "units": int(count)})
    return out


def _accepted(c: Client, accepted: ApiAccepted, wait: bool, as_json: bool) -> None:
    """Report a write: what was accepted, or (--wait) how it ended."""
    op = accepted.operation
    if op is None or not wait:
        if as_json:
            echo_json(accepted)
        elif op is None:
            print_api(accepted.api)
        else:
            stdout().print(
                f"{escape(accepted.message)}: {escape(accepted.api.name)} ({accepted.api_id})\n"
                f"Operation {op.id}: follow it with `nefos operation wait {op.id}`"
            )
        return
    final = wait_for(c, op.id, as_json)
    gone = accepted.api.status == "deleting"
    if as_json:
        data: dict[str, Any] = accepted.model_dump(mode="json")
        data["operation"] = final.model_dump(mode="json")
        if not gone:
            data["api"] = c.apis.get(accepted.api_id).model_dump(mode="json")
        echo_json(data)
    elif gone:
        stdout().print(f"API {accepted.api_id} deleted.")
    else:
        print_api(c.apis.get(accepted.api_id))


@app.command("list")
def list_(
    project: ProjectOpt = None,
    page: PageOpt = None,
    limit: LimitOpt = None,
    cursor: CursorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your APIs, with their health and latest deployment."""
    with api(as_json) as c:
        items = c.apis.list(project_id=project, page=page, limit=limit, cursor=cursor)
    listing(items, API_COLUMNS, as_json, empty="No APIs yet: `nefos api deploy`.")


@app.command()
def deploy(
    name: Annotated[str, typer.Argument(help="Name, unique in the project.", show_default=False)],
    image: Annotated[
        str, typer.Option("--image", "-i", help="The API's container image.", show_default=False)
    ],
    port: Annotated[
        int, typer.Option("--port", "-p", min=1, max=65535, help="The port it serves on.")
    ],
    health_path: Annotated[
        str, typer.Option("--health-path", help="Checked on each replica.")
    ] = "/health",
    replicas: Annotated[int, typer.Option(min=1, max=64, help="Number of replicas.")] = 1,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="KEY=VALUE (repeat for more).", show_default=False),
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU cores per replica, e.g. 0.5.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per replica, e.g. 128m.")] = None,
    base_path: Annotated[str | None, typer.Option(help="Where its routes start.")] = None,
    description: Annotated[str | None, typer.Option(help="What it does.")] = None,
    slug: Annotated[str | None, typer.Option(help="Its name on the gateway.")] = None,
    openapi_file: Annotated[
        Path | None, typer.Option("--openapi-file", help="Its OpenAPI document (JSON).")
    ] = None,
    units: UnitsOpt = None,
    units_header: UnitsHeaderOpt = None,
    project: ProjectOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Deploy an API from a container image."""
    document = None
    if openapi_file is not None:
        try:
            document = json.loads(openapi_file.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--openapi-file") from None
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    with api(as_json) as c:
        accepted = c.apis.deploy(
            name,
            image=image,
            port=port,
            health_check_path=health_path,
            replicas=replicas,
            environment=_environment(env or []) or None,
            resources=resources or None,
            base_path=base_path,
            description=description,
            slug=slug,
            openapi=document,
            units=_units(units) if units else None,
            units_header=units_header,
            project_id=project,
        )
        _accepted(c, accepted, wait, as_json)


@app.command("show")
def show_(api_id: ApiArg, as_json: JsonOpt = False) -> None:
    """Show an API: its status, health, endpoint and latest deployment."""
    with api(as_json) as c:
        found = c.apis.get(api_id)
    if as_json:
        echo_json(found)
    else:
        print_api(found)


@app.command()
def update(
    api_id: ApiArg,
    image: Annotated[str | None, typer.Option("--image", "-i", help="A new image.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="KEY=VALUE: the whole new environment (repeat)."),
    ] = None,
    replicas: Annotated[int | None, typer.Option(min=1, max=64, help="A new count.")] = None,
    health_path: Annotated[str | None, typer.Option("--health-path")] = None,
    base_path: Annotated[str | None, typer.Option("--base-path")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    units: UnitsOpt = None,
    no_units: Annotated[
        bool, typer.Option("--no-units", help="Every call 1 unit again (drop the rules).")
    ] = False,
    units_header: Annotated[
        str | None,
        typer.Option("--units-header", help="A new units header ('' for none)."),
    ] = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change an API (a new image, environment or replica count is a new deployment,
    rolled out replica by replica; --units replaces the whole list of units)."""
    if units and no_units:
        raise typer.BadParameter("--units or --no-units, not both", param_hint="--no-units")
    with api(as_json) as c:
        accepted = c.apis.update(
            api_id,
            image=image,
            environment=_environment(env) if env else None,
            replicas=replicas,
            health_check_path=health_path,
            base_path=base_path,
            description=description,
            units=[] if no_units else (_units(units) if units else None),
            units_header=units_header,
        )
        _accepted(c, accepted, wait, as_json)


@app.command()
def rollback(api_id: ApiArg, wait: WaitOpt = False, as_json: JsonOpt = False) -> None:
    """Deploy again the last spec that succeeded before the active one."""
    with api(as_json) as c:
        _accepted(c, c.apis.rollback(api_id), wait, as_json)


@app.command("rm")
def rm(
    api_id: ApiArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete an API (its replicas are drained and removed)."""
    if not yes:
        typer.confirm(f"Delete API {api_id}?", abort=True)
    with api(as_json) as c:
        _accepted(c, c.apis.delete(api_id), wait, as_json)


@app.command()
def deployments(api_id: ApiArg, as_json: JsonOpt = False) -> None:
    """An API's deployments, newest first."""
    with api(as_json) as c:
        items: list[DeploymentPublic] = c.apis.deployments(api_id)
    listing(items, DEPLOYMENT_COLUMNS, as_json, empty="No deployments.")


CALL_COLUMNS: list[Column] = [
    ("TIME", lambda c: f"{c.created_at:%Y-%m-%d %H:%M:%S}"),
    ("METHOD", "method"),
    ("PATH", "path"),
    ("STATUS", "status"),
    ("MS", lambda c: f"{c.latency_ms:.1f}"),
    ("BYTES", "bytes_out"),
    ("CONSUMER", "consumer"),
    ("REQUEST", "request_id"),
]


def _call_line(c: ApiCallLog) -> str:
    return (
        f"{c.created_at:%Y-%m-%d %H:%M:%S} {c.method} {c.path} {c.status} "
        f"{c.latency_ms:.1f}ms {c.bytes_out}B units={c.units} price={c.price} "
        f"consumer={c.consumer} request={c.request_id}"
    )


@app.command()
def logs(
    api_id: ApiArg,
    source: Annotated[
        str, typer.Option(help="container (replicas' output), gateway (call log) or all.")
    ] = "all",
    tail: Annotated[int, typer.Option(min=1, max=10_000, help="Lines per replica.")] = 100,
    since: Annotated[
        str | None, typer.Option(help="Calls and output from then on (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Calls and output before then (ISO 8601).")
    ] = None,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", help="Each output line after its time.")
    ] = False,
    status: Annotated[str | None, typer.Option(help="Calls answered 404, or 4xx.")] = None,
    consumer: Annotated[
        str | None, typer.Option(help="Calls of this consumer organisation.")
    ] = None,
    level: Annotated[
        str | None,
        typer.Option(help="debug, info, warning or error (calls: error 5xx, warning 4xx+)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Print the new calls (or, with --source container, output lines) as they come.",
        ),
    ] = False,
    seconds: Annotated[int, typer.Option(min=1, max=300, help="How long to follow.")] = 60,
    page: PageOpt = None,
    limit: LimitOpt = None,
    cursor: CursorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print an API's logs: its replicas' output and its gateway call log (newest
    first); with --follow, the calls made from now on (with --source container, the
    lines the replicas write), one a line."""
    with api(as_json) as c:
        if follow and source == "container":
            for out in c.apis.follow_output(api_id, seconds=seconds, since=since, level=level):
                typer.echo(
                    out.model_dump_json()
                    if as_json
                    else f"[replica {out.replica}] {out.time} {out.line}"
                )
            return
        if follow:
            for call in c.apis.follow(
                api_id,
                seconds=seconds,
                since=since,
                status=status,
                consumer=consumer,
                level=level,
            ):
                typer.echo(call.model_dump_json() if as_json else _call_line(call))
            return
        got = c.apis.logs(
            api_id,
            source=source,
            tail=tail,
            since=since,
            until=until,
            status=status,
            consumer=consumer,
            level=level,
            page=page,
            limit=limit,
            cursor=cursor,
            timestamps=timestamps,
        )
    if as_json:
        echo_json(got)
        return
    if got.logs:
        typer.echo(got.logs)
    if got.source != "container" and got.pagination is not None:
        calls = Page[ApiCallLog](items=got.items, pagination=got.pagination)
        listing(calls, CALL_COLUMNS, False, empty="No call.")


@app.command()
def metrics(
    api_id: ApiArg,
    period: Annotated[str, typer.Option(help="1h, 24h, 7d or 30d.")] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """An API's calls (how many, errors, latency, bytes, by endpoint and consumer) and
    its replicas' cpu and memory (% of their limits) over the period."""
    with api(as_json) as c:
        data = c.apis.metrics(api_id, period=period)
    if as_json:
        echo_json(data)
        return
    calls = data["calls"]
    latency = calls["latency_ms"]
    out = stdout()
    out.print(
        f"[bold]Calls[/bold], last {period}: {calls['calls']} ({calls.get('units', 0)} units), "
        f"errors {calls['errors']} "
        f"(5xx, {calls['error_rate']} %), client errors {calls['client_errors']} (4xx); "
        f"latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms; "
        f"{calls['bytes_out']} bytes out"
    )
    for e in calls["endpoints"]:
        out.print(
            f"  {escape(e['method'])} {escape(e['path'])}: {e['calls']} calls, "
            f"{e.get('units', 0)} units, {e['errors']} errors, p95 {e['p95_ms']} ms"
        )
    for k in calls["consumers"]:
        out.print(
            f"  consumer {k['consumer']}: {k['calls']} calls, {k.get('units', 0)} units, "
            f"{k['amount']}"
        )
    if "metrics" not in data:
        return
    series = data["metrics"]
    series_table(
        {
            "cpu": [float(p["value"]) for p in series["cpu"]],
            "memory": [float(p["value"]) for p in series["memory"]],
        },
        title=f"API {api_id}, last {period}",
    )
