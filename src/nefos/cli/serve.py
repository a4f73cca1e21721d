"""`nefos serve`: the embedded control plane in one process."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel

from nefos.config import Settings
from nefos.security.redact import install as redact_credentials

console = Console()


def _banner(settings: Settings, created: tuple[Any, str | None] | None) -> None:
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    lines = [
        f"[bold]Nefos[/] is listening on [cyan]{base}[/]",
        f"  API:      [cyan]{base}/api/v1[/]  (alias [cyan]{base}/api[/])",
        f"  Docs:     [cyan]{base}/docs[/]",
        f"  Database: {settings.resolved_database_url.split('@')[-1]}",
    ]
    if created is not None:
        user, generated = created
        lines.append(f"  Admin:    {user.email} (username [bold]{user.username}[/])")
        if generated:
            lines.append(f"  Password: [bold yellow]{generated}[/]  (shown once; change it)")
        else:
            lines.append("  Password: from NEFOS_ADMIN_PASSWORD")
    else:
        lines.append("  Admin:    already set up (NEFOS_ADMIN_EMAIL / your own password)")
    console.print(Panel("\n".join(lines), expand=False))


def _uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging, with credentials redacted on each of its handlers: its
    WebSocket lines print the path with its query (``/ws?token=...``), and at debug
    level every handshake header."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_credentials"] = {
        "()": "nefos.security.redact.RedactCredentials"
    }
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_credentials")
    return config


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [NEFOS_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NEFOS_PORT].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [NEFOS_DATA_DIR].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL [NEFOS_DATABASE_URL].")
    ] = None,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development).")] = False,
) -> None:
    """Start Nefos: API, migrations and the first admin, in one process."""
    import uvicorn

    from nefos.api.app import create_app

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "data_dir": data_dir,
            "database_url": database_url,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    redact_credentials()  # the root handler: Nefos's own logs, the websockets library's
    app = create_app(settings, on_started=lambda _core, created: _banner(settings, created))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        log_config=_uvicorn_log_config(),
        # The same proxies as gateway.client.client_ip: uvicorn then also takes the
        # scheme (X-Forwarded-Proto) from them, and the client it finds is the same.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )
