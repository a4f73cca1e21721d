from __future__ import annotations

import typer

from nefos.cli.serve import serve

app = typer.Typer(no_args_is_help=True, help="Nefos: cloud control plane for VMs and containers.")


@app.callback()
def _root() -> None:
    """Nefos: cloud control plane for VMs and containers."""


app.command()(serve)


def main() -> None:
    app()
