"""`nefos api-key ...`: your API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from nefos.cli._common import (
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    api,
    listing,
    show,
    stderr,
    stdout,
)

app = typer.Typer(no_args_is_help=True, help="API keys: scoped, revocable credentials.")

KeyArg = Annotated[str, typer.Argument(help="API key id.", show_default=False)]

KEY_COLUMNS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("PREFIX", "prefix"),
    ("SCOPES", "scopes"),
    ("EXPIRES", "expires_at"),
    ("REVOKED", "revoked_at"),
]


@app.command("list")
def list_(
    page: PageOpt = None, cursor: CursorOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False
) -> None:
    """List your API keys (never their secrets)."""
    with api(as_json) as c:
        keys = c.api_keys.list(page=page, cursor=cursor, limit=limit)
    listing(keys, KEY_COLUMNS, as_json, empty="No API keys.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="A name to recognise the key by.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help="A scope such as compute:read (repeat the option); '*': all you may grant.",
            show_default=False,
        ),
    ],
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Expire after this many days.")
    ] = None,
    org: Annotated[
        str | None, typer.Option("--org", help="Bind the key to one organisation.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key. Its secret is printed once: store it now."""
    with api(as_json) as c:
        key = c.api_keys.create(
            name=name, scopes=scope, expires_in_days=expires_in_days, organisation_id=org
        )
    if as_json:
        show(key, True)
    else:
        out = stdout()
        out.print(f"Created API key {escape(key.name)} ({key.id}), scopes: {', '.join(key.scopes)}")
        out.print(escape(key.key), soft_wrap=True)
    stderr().print(
        "[bold yellow]Warning:[/] this is the only time the secret is shown; Nefos keeps only "
        "a hash. Use it as NEFOS_API_KEY or in the X-API-Key header."
    )


@app.command("show")
def show_(key_id: KeyArg, as_json: JsonOpt = False) -> None:
    """Show an API key (not its secret)."""
    with api(as_json) as c:
        key = c.api_keys.get(key_id)
    show(key, as_json)


@app.command()
def revoke(key_id: KeyArg, as_json: JsonOpt = False) -> None:
    """Revoke an API key: it stops working at once."""
    with api(as_json) as c:
        key = c.api_keys.revoke(key_id)
    show(key, as_json)
