"""`nefos admin ...`: platform administration (platform admins only)."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import CursorOpt, JsonOpt, LimitOpt, PageOpt, api, listing, show

app = typer.Typer(no_args_is_help=True, help="Platform administration (admins only).")

UserArg = Annotated[str, typer.Argument(help="User id.", show_default=False)]

USER_COLUMNS = [
    ("ID", "id"),
    ("EMAIL", "email"),
    ("USERNAME", "username"),
    ("NAME", "name"),
    ("ACTIVE", "is_active"),
    ("ADMIN", "is_admin"),
    ("LAST LOGIN", "last_login_at"),
]


@app.command("create-user")
def create_user(
    email: Annotated[str, typer.Argument(help="The new user's e-mail.", show_default=False)],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            confirmation_prompt=True,
            hide_input=True,
            envvar="NEFOS_NEW_USER_PASSWORD",
            help="The new user's password (prompted for when not given).",
            show_default=False,
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    username: Annotated[str | None, typer.Option(help="Login name.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make a platform admin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user, with a personal organisation and a default project."""
    with api(as_json) as c:
        user = c.admin.create_user(
            email=email, password=password, name=name, username=username, is_admin=admin
        )
    show(user, as_json)


@app.command("list-users")
def list_users(
    page: PageOpt = None, cursor: CursorOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False
) -> None:
    """List every user of the platform."""
    with api(as_json) as c:
        users = c.admin.list_users(page=page, cursor=cursor, limit=limit)
    listing(users, USER_COLUMNS, as_json, empty="No users.")


@app.command("show-user")
def show_user(user_id: UserArg, as_json: JsonOpt = False) -> None:
    """Show a user."""
    with api(as_json) as c:
        user = c.admin.get_user(user_id)
    show(user, as_json)


@app.command("disable-user")
def disable_user(user_id: UserArg, as_json: JsonOpt = False) -> None:
    """Disable a user: their sessions and API keys stop working at once."""
    with api(as_json) as c:
        user = c.admin.update_user(user_id, is_active=False)
    show(user, as_json)


@app.command("enable-user")
def enable_user(user_id: UserArg, as_json: JsonOpt = False) -> None:
    """Enable a disabled user again (their old keys stay revoked)."""
    with api(as_json) as c:
        user = c.admin.update_user(user_id, is_active=True)
    show(user, as_json)
