"""`nefos session ...`: your sign-ins (browsers, this CLI, scripts that log in)."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import CursorOpt, JsonOpt, LimitOpt, PageOpt, api, listing, show

app = typer.Typer(no_args_is_help=True, help="Sessions: your sign-ins, and ending one.")

SESSION_COLUMNS = [
    ("ID", "id"),
    ("STARTED", "created_at"),
    ("EXPIRES", "expires_at"),
    ("IP", "ip_address"),
    ("CLIENT", "user_agent"),
    ("CURRENT", "current"),
]


@app.command("list")
def list_(
    page: PageOpt = None, cursor: CursorOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False
) -> None:
    """List your live sessions, newest first (CURRENT: this CLI's)."""
    with api(as_json) as c:
        sessions = c.auth.sessions(page=page, cursor=cursor, limit=limit)
    listing(sessions, SESSION_COLUMNS, as_json, empty="No sessions.")


@app.command()
def revoke(
    session_id: Annotated[str, typer.Argument(help="Session id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """End a session: its tokens stop working at once."""
    with api(as_json) as c:
        ended = c.auth.revoke_session(session_id)
    show(ended, as_json)
