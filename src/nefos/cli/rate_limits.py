"""`nefos rate-limit ...`: your limits, and organisations' own (platform admins)."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import JsonOpt, api, echo_json, fail, listing
from nefos.schemas.rate_limits import OrgLimits

app = typer.Typer(
    no_args_is_help=True,
    help="Rate limits: yours, and an organisation's own (platform admins).",
)

OrgArg = Annotated[str, typer.Argument(help="The organisation's id.")]


@app.command("show")
def show_mine(as_json: JsonOpt = False) -> None:
    """Your limits per group and overall (`user`), and what remains of each now."""
    with api(as_json) as c:
        mine = c.rate_limits.status()
    if as_json:
        echo_json(mine)
        return
    typer.echo(f"Counted as: {mine.caller} ({mine.backend} counters)")
    listing(
        mine.limits,
        [
            ("GROUP", "group"),
            ("RATE", "rate"),
            ("REMAINING", "remaining"),
            ("RESET (epoch s)", "reset"),
        ],
        False,
    )


def _org_limits(limits: OrgLimits, as_json: bool) -> None:
    if as_json:
        echo_json(limits)
        return
    rows = [
        {"group": group, "rate": s.rate, "source": s.source} for group, s in limits.limits.items()
    ]
    typer.echo(f"Organisation {limits.organisation_id}")
    for row in rows:
        typer.echo(f"  {row['group']:<12} {row['rate']:<16} {row['source']}")


@app.command("get")
def get(org: OrgArg, as_json: JsonOpt = False) -> None:
    """An organisation's limits: its own (`organisation`) or the defaults."""
    with api(as_json) as c:
        _org_limits(c.rate_limits.get(org), as_json)


@app.command("set")
def set_limits(
    org: OrgArg,
    limits: Annotated[
        list[str],
        typer.Argument(help="GROUP=RATE pairs, e.g. containers=500/minute user=none."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Replace an organisation's own limits (groups left out take the default)."""
    pairs: dict[str, str] = {}
    for item in limits:
        group, sep, rate = item.partition("=")
        if not sep or not group or not rate:
            fail(f"not GROUP=RATE: {item!r}", code=2, as_json=as_json)
        pairs[group.strip()] = rate.strip()
    with api(as_json) as c:
        _org_limits(c.rate_limits.set(org, pairs), as_json)


@app.command("unset")
def unset(
    org: OrgArg,
    group: Annotated[str, typer.Argument(help="auth, containers, monitoring, billing or user.")],
    as_json: JsonOpt = False,
) -> None:
    """Drop an organisation's own limit of one group: the default applies again."""
    with api(as_json) as c:
        _org_limits(c.rate_limits.unset(org, group), as_json)
