"""`nefos login`, `nefos logout`, `nefos whoami`."""

from __future__ import annotations

from typing import Annotated

import typer

from nefos.cli._common import (
    DEFAULT_URL,
    EXIT_API_ERROR,
    EXIT_NOT_LOGGED_IN,
    JsonOpt,
    api,
    config_location,
    done,
    fail,
    handle_errors,
    show,
    stderr,
)
from nefos.cli._config import Config, ConfigError, load_config, save_config
from nefos.sdk import Client, NefosError


def login(
    url: Annotated[str, typer.Option(envvar="NEFOS_URL", help="The Nefos server.")] = DEFAULT_URL,
    email: Annotated[str | None, typer.Option(help="Log in by e-mail.")] = None,
    username: Annotated[str | None, typer.Option(help="Log in by username.")] = None,
    password: Annotated[
        str | None,
        typer.Option(
            envvar="NEFOS_PASSWORD",
            help="The password (prompted for when not given).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Log in and keep the session (never the password) in the config file."""
    if not email and not username:
        who = typer.prompt("Email or username").strip()
        email, username = (who, None) if "@" in who else (None, who)
    if not password:
        password = typer.prompt("Password", hide_input=True)
    try:
        client = Client(url)
    except ValueError as exc:
        fail(str(exc), code=EXIT_API_ERROR, as_json=as_json)
    with client, handle_errors(as_json):
        result = client.auth.login(email=email, username=username, password=password)
    # A new login replaces whatever the file held (another server's session too).
    session = Config(
        url=url,
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        user=result.user.email,
    )
    try:
        path = save_config(session)
    except OSError as exc:
        fail(
            f"cannot save the session in {config_location()}: {exc.strerror}",
            code=EXIT_NOT_LOGGED_IN,
            as_json=as_json,
        )
    if as_json:
        show(result.user, as_json=True)
    else:
        done(f"Logged in to {url} as {result.user.email}. Session saved in {path}.", False)


def logout(as_json: JsonOpt = False) -> None:
    """End the session on the server and forget it here."""
    try:
        config = load_config()
    except ConfigError as exc:
        fail(str(exc), code=EXIT_NOT_LOGGED_IN, as_json=as_json)
    if not config.has_session:
        done("Not logged in.", as_json)
        return
    # The stored session itself, even when NEFOS_API_KEY or NEFOS_URL point elsewhere.
    url = config.url or DEFAULT_URL
    client = Client(url, access_token=config.access_token, refresh_token=config.refresh_token)
    with client:
        try:
            client.auth.logout()
        except NefosError as exc:
            # Expired, revoked or unreachable: nothing to end there; forget it here.
            if not as_json:
                stderr().print(f"[yellow]The server did not end the session:[/] {exc}")
    save_config(Config(url=config.url))
    done(f"Logged out of {url}.", as_json)


def whoami(as_json: JsonOpt = False) -> None:
    """Show the user the CLI acts as (the stored session, or NEFOS_API_KEY)."""
    with api(as_json) as client:
        me = client.auth.me()
    show(me, as_json, title=None if as_json else f"{client.base_url} ({config_location()})")
