"""`nefos loadtest ...`: load tests of your own services, and their scenarios."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    api,
    done,
    echo_json,
    listing,
    show,
    stderr,
    stdout,
)
from nefos.cli.vms import ProjectOpt
from nefos.schemas.loadtests import LoadTestPublic

app = typer.Typer(
    no_args_is_help=True,
    help="Load tests: closed or open model against one of your services, with "
    "percentiles, a timeline and pass/fail thresholds.",
)
scenarios = typer.Typer(
    no_args_is_help=True, help="Stored scenarios: weighted requests a load test sends."
)
app.add_typer(scenarios, name="scenarios")

TestArg = Annotated[str, typer.Argument(help="Load test id.", show_default=False)]
ScenarioArg = Annotated[str, typer.Argument(help="Scenario id.", show_default=False)]
ENDED = ("completed", "failed", "cancelled")

TEST_COLUMNS: list[Column] = [
    ("ID", "test_id"),
    ("STATUS", "status"),
    ("SCENARIO", "scenario"),
    ("TARGET", lambda t: t.target[:8]),
    ("REQUESTS", lambda t: (t.results or {}).get("total_requests")),
    ("RPS", lambda t: (t.results or {}).get("requests_per_second")),
    ("P95 MS", lambda t: (t.results or {}).get("p95_response_time")),
    ("PASSED", "passed"),
    ("STARTED", "started_at"),
]
SCENARIO_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("REQUESTS", lambda s: len(s.requests)),
    ("CREATED", "created_at"),
]


def progress_line(t: LoadTestPublic) -> str:
    """One line of a running test: rate, p95, errors."""
    r = t.results or {}
    rps = r.get("requests_per_second") or 0
    p95 = r.get("p95_response_time")
    line = (
        f"{t.status}: {r.get('total_requests') or 0} requests, {rps:.1f} req/s, "
        f"p95 {'-' if p95 is None else f'{p95:.1f} ms'}, {r.get('failed_requests') or 0} errors"
    )
    return line + (" (generator saturated)" if r.get("saturated") else "")


def results_table(t: LoadTestPublic) -> Table:
    """The end of a run: totals, percentiles, errors and the thresholds' verdict."""
    r = t.results or {}
    table = Table(title=f"Load test {t.test_id}: {t.status}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()

    def ms(key: str) -> str:
        v = r.get(key)
        return "-" if v is None else f"{v:.2f} ms"

    rows: list[tuple[str, str]] = [
        ("target", t.target),
        ("scenario", t.scenario),
        ("model", str(t.params.get("model", ""))),
        ("requests", f"{r.get('total_requests', 0)} ({r.get('failed_requests', 0)} failed)"),
        ("rate", f"{r.get('requests_per_second', 0)} req/s"),
        ("avg", ms("avg_response_time")),
        ("p50", ms("p50_response_time")),
        ("p90", ms("p90_response_time")),
        ("p95", ms("p95_response_time")),
        ("p99", ms("p99_response_time")),
        ("p99.9", ms("p99_9_response_time")),
        ("max", ms("max_response_time")),
    ]
    errors = r.get("errors") or {}
    if errors.get("by_kind"):
        rows.append(("errors", ", ".join(f"{k}: {v}" for k, v in errors["by_kind"].items())))
    if r.get("saturated"):
        rows.append(("saturated", str((r.get("saturation") or {}).get("reason"))))
    for check in (t.verdict or {}).get("thresholds", []):
        mark = "pass" if check["passed"] else "FAIL"
        rows.append((f"threshold {check['threshold']}", f"{mark} (measured {check['value']})"))
    if t.passed is not None:
        rows.append(("passed", str(t.passed)))
    if t.error:
        rows.append(("error", t.error))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _follow(c: Any, test_id: str, as_json: bool) -> LoadTestPublic:
    console = stderr()
    if as_json:
        return c.load_tests.wait(test_id)  # type: ignore[no-any-return]
    with console.status("starting") as status:

        def update(t: LoadTestPublic) -> None:
            status.update(progress_line(t))

        return c.load_tests.wait(test_id, on_progress=update)  # type: ignore[no-any-return]


@app.command("run")
def run(
    target: Annotated[str, typer.Argument(help="Your service's id (a container's id).")],
    users: Annotated[int, typer.Option(help="Virtual users (or most in flight, open model).")] = 10,
    duration: Annotated[int, typer.Option(help="Seconds the test sends for.")] = 30,
    rate: Annotated[float | None, typer.Option(help="Requests per second: the open model.")] = None,
    ramp_up: Annotated[int, typer.Option("--ramp-up", help="Seconds to ramp up over.")] = 0,
    scenario: Annotated[
        str, typer.Option(help="web_app (GET /) or a stored scenario's id or name.")
    ] = "web_app",
    threshold: Annotated[
        list[str] | None,
        typer.Option("--threshold", help='Pass/fail, e.g. "p95<300", "error_rate<1%".'),
    ] = None,
    detach: Annotated[bool, typer.Option(help="Start it and return at once.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a load test, show its progress (rate, p95, errors), then its results.
    Exits 1 when a threshold fails."""
    with api(as_json) as c:
        accepted = c.load_tests.start(
            target,
            duration=duration,
            users=users,
            ramp_up_time=ramp_up,
            scenario=scenario,
            rate=rate,
            thresholds=threshold or (),
        )
        if detach:
            done(f"Load test {accepted.test_id} started", as_json, accepted)
            return
        final = _follow(c, accepted.test_id, as_json)
    if as_json:
        echo_json(final)
    else:
        stdout().print(results_table(final))
    if final.passed is False or final.status == "failed":
        raise typer.Exit(1)


@app.command("show")
def show_(
    test_id: TestArg,
    timeline: Annotated[bool, typer.Option(help="Print the per-second timeline too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """A test's results (partial while it runs)."""
    with api(as_json) as c:
        t = c.load_tests.get(test_id)
    if as_json:
        echo_json(t)
        return
    stdout().print(results_table(t))
    if timeline:
        for entry in t.timeline or []:
            stdout().print(json.dumps(entry))


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="running, completed, failed or cancelled.")
    ] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A project's load tests, newest first."""
    with api(as_json) as c:
        tests = c.load_tests.list(
            status=status, project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(tests, TEST_COLUMNS, as_json, empty="No load tests.")


@app.command("cancel")
def cancel(test_id: TestArg, as_json: JsonOpt = False) -> None:
    """Stop a running test; it keeps what it measured."""
    with api(as_json) as c:
        t = c.load_tests.cancel(test_id)
    done(f"Load test {t.test_id} cancelled", as_json, t)


# --- scenarios -------------------------------------------------------------------------
@scenarios.command("list")
def list_scenarios(
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    with api(as_json) as c:
        found = c.load_test_scenarios.list(
            project_id=project, page=page, cursor=cursor, limit=limit
        )
    listing(found, SCENARIO_COLUMNS, as_json, empty="No scenarios.")


@scenarios.command("create")
def create_scenario(
    name: Annotated[str, typer.Argument(help="Its name (a test names it so).")],
    request: Annotated[
        list[str],
        typer.Option(
            "--request",
            help='"METHOD PATH" or "METHOD PATH WEIGHT", e.g. "GET / 3"; or a JSON '
            'object {"method", "path", "headers", "body", "weight"}. Repeat it.',
        ),
    ],
    description: Annotated[str | None, typer.Option(help="What it exercises.")] = None,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a scenario of weighted requests."""
    requests = [_request(r) for r in request]
    with api(as_json) as c:
        made = c.load_test_scenarios.create(
            name, requests, description=description, project_id=project
        )
    show(made, as_json)


def _request(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise typer.BadParameter("a JSON object")
        return value
    parts = text.split()
    if len(parts) not in (2, 3):
        raise typer.BadParameter(f"{text!r}: METHOD PATH [WEIGHT]")
    out: dict[str, Any] = {"method": parts[0].upper(), "path": parts[1]}
    if len(parts) == 3:
        out["weight"] = int(parts[2])
    return out


@scenarios.command("show")
def show_scenario(scenario_id: ScenarioArg, as_json: JsonOpt = False) -> None:
    with api(as_json) as c:
        found = c.load_test_scenarios.get(scenario_id)
    show(found, as_json)


@scenarios.command("delete")
def delete_scenario(scenario_id: ScenarioArg, as_json: JsonOpt = False) -> None:
    with api(as_json) as c:
        message = c.load_test_scenarios.delete(scenario_id)
    done(message.message, as_json, message)
