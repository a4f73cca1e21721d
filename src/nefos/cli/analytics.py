"""`nefos analytics ...`: requests, errors, latency and where they came from."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nefos.cli._common import Column, JsonOpt, api, echo_json, listing, show, stdout
from nefos.cli.wallet import OrgOpt

app = typer.Typer(
    no_args_is_help=True,
    help="API analytics of the request log: an organisation's traffic, or the platform's.",
)

PeriodOpt = Annotated[
    str | None,
    typer.Option("--period", help="1h, 24h, 7d or 30d back from now (default 24h)."),
]
SinceOpt = Annotated[str | None, typer.Option("--from", help="From (ISO 8601).")]
UntilOpt = Annotated[
    str | None, typer.Option("--to", help="Until, exclusive (ISO 8601; default now).")
]
PlatformOpt = Annotated[
    bool, typer.Option("--platform", help="The whole platform's traffic (platform admins).")
]
LimitOpt = Annotated[int | None, typer.Option(min=1, max=500, help="Most rows (max 500).")]


def _window(
    period: str | None, since: str | None, until: str | None, org: str | None, platform: bool
) -> dict[str, Any]:
    return {
        "period": period,
        "start": since,
        "end": until,
        "organisation_id": org,
        "platform": platform,
    }


@app.command("overview")
def overview(
    period: PeriodOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    org: OrgOpt = None,
    platform: PlatformOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Requests, error rates, latency percentiles, unique users and IPs, bytes, and
    the busiest endpoints."""
    with api(as_json) as c:
        o = c.analytics.overview(**_window(period, since, until, org, platform))
    if as_json:
        echo_json(o)
        return
    top = o.top_endpoints
    shown = o.model_copy(update={"top_endpoints": []})
    show(shown, False, title=f"Analytics {o.start} to {o.end}")
    listing(
        top,
        [
            ("METHOD", "method"),
            ("ROUTE", "route"),
            ("REQUESTS", "requests"),
            ("5xx %", "error_rate"),
        ],
        False,
        empty="No requests in the window.",
    )


@app.command("traffic")
def traffic(
    period: PeriodOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    interval: Annotated[
        str | None, typer.Option(help="minute, hour or day (default: by the period).")
    ] = None,
    org: OrgOpt = None,
    platform: PlatformOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Requests over time, per bucket, with their status classes."""
    with api(as_json) as c:
        t = c.analytics.traffic(interval=interval, **_window(period, since, until, org, platform))
    if as_json:
        echo_json(t)
        return
    stdout().print(f"{t.total_requests} requests, per {t.interval}, {t.start} to {t.end}")
    columns: list[Column] = [
        ("TIME", "timestamp"),
        ("REQUESTS", "requests"),
        ("2xx", "status_2xx"),
        ("3xx", "status_3xx"),
        ("4xx", "status_4xx"),
        ("5xx", "status_5xx"),
    ]
    listing([b for b in t.buckets if b.requests], columns, False, empty="No requests.")


@app.command("performance")
def performance(
    period: PeriodOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
    org: OrgOpt = None,
    platform: PlatformOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per endpoint: requests, latency (p50, p95, p99 in ms) and error rates."""
    with api(as_json) as c:
        p = c.analytics.performance(limit=limit, **_window(period, since, until, org, platform))
    if as_json:
        echo_json(p)
        return
    columns: list[Column] = [
        ("METHOD", "method"),
        ("ROUTE", "route"),
        ("REQUESTS", "requests"),
        ("P50 ms", "p50_ms"),
        ("P95 ms", "p95_ms"),
        ("P99 ms", "p99_ms"),
        ("5xx %", "error_rate"),
        ("4xx %", "client_error_rate"),
    ]
    listing(p.endpoints, columns, False, empty="No requests in the window.")


@app.command("geography")
def geography(
    period: PeriodOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = None,
    org: OrgOpt = None,
    platform: PlatformOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Requests by country (GeoIP on the server) or by the clients' network."""
    with api(as_json) as c:
        g = c.analytics.geography(limit=limit, **_window(period, since, until, org, platform))
    if as_json:
        echo_json(g)
        return
    key: Column = ("COUNTRY", "country") if g.grouped_by == "country" else ("NETWORK", "network")
    columns: list[Column] = [
        key,
        ("REQUESTS", "requests"),
        ("IPs", "unique_ips"),
        ("5xx %", "error_rate"),
    ]
    listing(g.items, columns, False, empty="No requests in the window.")
