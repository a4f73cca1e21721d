"""`nefos events`: the live events of your tenants, as they happen."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from nefos.cli._common import JsonOpt, api, stdout
from nefos.schemas.events import EVENT_TYPES, EventMessage


def _summary(event: EventMessage) -> str:
    d: dict[str, Any] = event.data
    subject = next(
        (
            f"{key.removesuffix('_id')} {d[key]}"
            for key in ("container_id", "vm_id", "host_id", "operation_id", "alert_id")
            if d.get(key)
        ),
        "",
    )
    parts = [subject]
    if d.get("name"):
        parts.append(f"({d['name']})")
    if d.get("kind"):
        parts.append(str(d["kind"]))
    if d.get("previous_status"):
        parts.append(f"{d['previous_status']} -> {d.get('status')}")
    elif d.get("status"):
        parts.append(str(d["status"]))
    if isinstance(d.get("metrics"), dict):
        parts.append(" ".join(f"{k}={v}" for k, v in d["metrics"].items()))
    if d.get("message"):
        parts.append(str(d["message"]))
    return " ".join(p for p in parts if p)


def events(
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help=f"Only this event type (repeatable): {', '.join(EVENT_TYPES)}.",
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Stop after this many events.")
    ] = None,
    ticket: Annotated[
        bool,
        typer.Option(
            "--ticket",
            help="Print a one-time ticket for /ws?ticket=... (a browser, websocat) and exit.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stream events (status changes, operations, metrics, alerts) until interrupted.

    One line per event; with --json, one JSON object per line (JSON Lines). The
    credentials travel in a header, never in the URL.
    """
    if ticket:
        with api(as_json) as c:
            issued = c.events_ticket()
        if as_json:
            print(issued.model_dump_json(), flush=True)
        else:
            print(issued.ticket, flush=True)
        return
    unknown = sorted(set(types or []) - set(EVENT_TYPES))
    if unknown:
        raise typer.BadParameter(
            f"unknown event type(s): {', '.join(unknown)}", param_hint="--type"
        )
    out = stdout()
    seen = 0
    with api(as_json) as c:
        try:
            for event in c.events(types):
                if as_json:
                    print(json.dumps(event.model_dump()), flush=True)
                else:
                    out.print(
                        f"[dim]{event.timestamp}[/] [bold]{event.type}[/] {_summary(event)}",
                        highlight=False,
                        soft_wrap=True,
                    )
                seen += 1
                if count is not None and seen >= count:
                    return
        except KeyboardInterrupt:
            return
