"""`nefos serve`: the embedded control plane in one process, or one role of several."""

from __future__ import annotations

import copy
import logging
import os
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
        f"  Console:  [cyan]{base}/[/]",
        f"  API:      [cyan]{base}/api/v1[/]  (alias [cyan]{base}/api[/])",
        f"  Docs:     [cyan]{base}/docs[/]",
        f"  Database: {settings.resolved_database_url.split('@')[-1]}",
        f"  Role:     {settings.role}"
        + (f" ({settings.processes} processes)" if settings.processes > 1 else ""),
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


def _app(settings: Settings) -> Any:
    """The ASGI app of one process: the whole API, or for a worker only /health."""
    from nefos.api.app import create_app, health_only

    def started(_core: Any, created: tuple[Any, str | None] | None) -> None:
        if settings.processes == 1 or created is not None:  # one banner, not N
            _banner(settings, created)

    app = create_app(settings, on_started=started)
    return health_only(app) if settings.role == "worker" else app


def app_factory() -> Any:
    """Each of ``--processes N``'s processes builds its app here, its settings from
    the environment the parent set (uvicorn's ``factory=True``)."""
    _logging(settings := Settings())
    return _app(settings)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    redact_credentials()  # the root handler: Nefos's own logs, the websockets library's


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [NEFOS_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [NEFOS_PORT].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory [NEFOS_DATA_DIR].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL [NEFOS_DATABASE_URL].")
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="all (HTTP, workers and loops: one process), api (HTTP only) or worker "
            "(operation workers and loops; HTTP only /health) [NEFOS_ROLE]."
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(help="Processes on one port, each with this role [NEFOS_PROCESSES]."),
    ] = None,
    reload: Annotated[bool, typer.Option(help="Reload on code changes (development).")] = False,
) -> None:
    """Start Nefos: API, migrations and the first admin, in one process (or, on
    PostgreSQL, as one of several: see --role and --processes)."""
    import asyncio

    import uvicorn
    from pydantic import ValidationError

    from nefos.bootstrap import RoleError, preflight

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "data_dir": data_dir,
            "database_url": database_url,
            "role": role,
            "processes": processes,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            console.print(f"[red]error:[/] {where}: {err['msg']}")
        raise typer.Exit(2) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _logging(settings)
    try:
        asyncio.run(preflight(settings))
    except RoleError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "log_config": _uvicorn_log_config(),
        # The same proxies as gateway.client.client_ip: uvicorn then also takes the
        # scheme (X-Forwarded-Proto) from them, and the client it finds is the same.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }
    if settings.processes == 1:
        uvicorn.run(_app(settings), **common)
        return
    # Several processes: uvicorn's workers, each building its app from the
    # environment; what the command line set goes there.
    for name, value in overrides.items():
        os.environ[f"NEFOS_{name.upper()}"] = str(value)
    uvicorn.run("nefos.cli.serve:app_factory", factory=True, workers=settings.processes, **common)
