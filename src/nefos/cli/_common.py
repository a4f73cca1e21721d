"""What every command shares: the SDK client, error reporting and output.

A command opens the client with :func:`api`; any SDK error inside becomes a
message on stderr (the API's message, code and field details, never a
traceback) and a non-zero exit:

* 1: the API answered with an error;
* 3: the server could not be reached;
* 4: not logged in, or the config file is unusable.

Output is a Rich table for people, or with ``--json`` the API's data as JSON
on stdout (errors then go to stderr as JSON too).

A write that the API carries out as an operation (a 202) takes ``--wait``:
:func:`wait_for` follows the operation with a progress bar on stderr until it
ends, and a failed operation exits 1 with its error, like an API error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from nefos.cli._config import Config, ConfigError, config_path, load_config, save_config
from nefos.schemas.compute import OperationPublic
from nefos.sdk import (
    AuthenticationError,
    Client,
    NefosAPIError,
    NefosError,
    OperationFailedError,
    OperationTimeoutError,
    Page,
    Tokens,
    TransportError,
)

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_NOT_LOGGED_IN = 4

M = TypeVar("M", bound=BaseModel)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (the API's data) instead of a table.")
]
PageOpt = Annotated[int | None, typer.Option(min=1, help="Page number, from 1.")]
CursorOpt = Annotated[
    str | None,
    typer.Option(
        help="Go on after the page that printed this cursor (its next_cursor), instead of --page.",
        show_default=False,
    ),
]
LimitOpt = Annotated[int | None, typer.Option(min=1, max=500, help="Items per page (max 500).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait", help="Follow the operation until it ends; exit 1 with its error if it fails."
    ),
]
WAIT_TIMEOUT = 600.0  # seconds --wait waits before giving up (the operation goes on)
WAIT_POLL = 0.5
RoleOpt = Annotated[
    str, typer.Option(help="Role in the organisation: owner, admin, member or viewer.")
]


def stdout() -> Console:
    # Made per call: the console must write to the sys.stdout of the moment. Piped
    # output gets a wide page, so no table is cut to fit a terminal that is not there.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    # No emoji: ":x:" in a server's message ("image localhost/nope:x:") stays as it is.
    return Console(highlight=False, soft_wrap=False, width=wide, emoji=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, emoji=False)


# --- errors -------------------------------------------------------------------------
def fail(message: str, *, code: int, as_json: bool, **extra: Any) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({"error": {"message": message, **extra}}), err=True)
    else:
        stderr().print(f"[bold red]Error:[/] {escape(message)}")
    raise typer.Exit(code)


def _report_api_error(exc: NefosAPIError, as_json: bool) -> NoReturn:
    if as_json:
        body = {
            "error": {
                "status": exc.status_code,
                "code": exc.code,
                "message": exc.message,
                "details": exc.details,
                "request_id": exc.request_id,
            }
        }
        typer.echo(json.dumps(body), err=True)
        raise typer.Exit(EXIT_API_ERROR)
    console = stderr()
    console.print(
        f"[bold red]Error:[/] {escape(exc.message)} [dim]({exc.code}, HTTP {exc.status_code})[/]"
    )
    for field, reason in exc.details.items():
        if field in ("request_id", "reason"):
            continue
        console.print(f"  {escape(str(field))}: {escape(str(reason))}")
    if exc.status_code >= 500 and exc.request_id:
        console.print(f"  request id: {exc.request_id}")
    if isinstance(exc, AuthenticationError):
        console.print("  Run [bold]nefos login[/] (or set NEFOS_API_KEY).")
    raise typer.Exit(EXIT_API_ERROR)


def _report_operation(exc: OperationFailedError | OperationTimeoutError, as_json: bool) -> NoReturn:
    op = exc.operation
    if as_json:
        error: dict[str, Any] = {"message": str(exc), "operation": op.model_dump(mode="json")}
        if isinstance(exc, OperationFailedError):
            error.update(code=exc.code, message=exc.message)
        typer.echo(json.dumps({"error": error}), err=True)
        raise typer.Exit(EXIT_API_ERROR)
    console = stderr()
    if isinstance(exc, OperationFailedError):
        console.print(
            f"[bold red]Error:[/] {escape(exc.message)} [dim]({exc.code})[/]\n"
            f"  operation {op.id} ({escape(op.kind)}) {escape(op.status)}"
        )
    else:
        console.print(
            f"[bold red]Error:[/] {escape(str(exc))}\n"
            f"  It goes on: [bold]nefos operation wait {op.id}[/]"
        )
    raise typer.Exit(EXIT_API_ERROR)


# --- the client ---------------------------------------------------------------------
def server_url(config: Config) -> str:
    return os.environ.get("NEFOS_URL") or config.url or DEFAULT_URL


def _same_server(a: str, b: str) -> bool:
    def root(url: str) -> str:
        url = url.strip().rstrip("/")
        for suffix in ("/api/v1", "/api"):
            url = url.removesuffix(suffix)
        return url

    return root(a) == root(b)


def _token_writer(config: Config) -> Callable[[Tokens | None], None]:
    """Persist each token pair the SDK obtains: the old refresh token is spent."""

    def write(tokens: Tokens | None) -> None:
        try:
            save_config(config.with_tokens(tokens))
        except OSError as exc:
            stderr().print(
                f"[yellow]Warning:[/] could not save the renewed session in {config_path()} "
                f"({exc.strerror}); you may have to log in again."
            )

    return write


def open_client(as_json: bool, *, anonymous: bool = False) -> Client:
    """The client for this invocation: ``NEFOS_API_KEY``, else the stored session;
    with ``anonymous`` (what anyone may read, such as the marketplace), no
    credentials when there are none."""
    try:
        config = load_config()
    except ConfigError as exc:
        fail(str(exc), code=EXIT_NOT_LOGGED_IN, as_json=as_json)
    url = server_url(config)
    api_key = os.environ.get("NEFOS_API_KEY")
    try:
        if api_key:
            return Client(url, api_key=api_key)
        # The stored tokens belong to the stored server: never send them elsewhere.
        session = config.has_session and config.url is not None and _same_server(config.url, url)
        if not session and anonymous:
            return Client(url)
        if not session:
            fail(
                f"Not logged in to {url}: run `nefos login` (or set NEFOS_API_KEY).",
                code=EXIT_NOT_LOGGED_IN,
                as_json=as_json,
            )
        return Client(
            url,
            access_token=config.access_token,
            refresh_token=config.refresh_token,
            on_tokens=_token_writer(config),
        )
    except ValueError as exc:  # a malformed URL
        fail(str(exc), code=EXIT_API_ERROR, as_json=as_json)


@contextmanager
def handle_errors(as_json: bool) -> Iterator[None]:
    """Turn SDK errors into a message and an exit code."""
    try:
        yield
    except NefosAPIError as exc:
        _report_api_error(exc, as_json)
    except (OperationFailedError, OperationTimeoutError) as exc:
        _report_operation(exc, as_json)
    except TransportError as exc:
        fail(f"Cannot reach the Nefos server: {exc}", code=EXIT_UNREACHABLE, as_json=as_json)
    except NefosError as exc:
        fail(str(exc), code=EXIT_API_ERROR, as_json=as_json)


@contextmanager
def api(as_json: bool, *, anonymous: bool = False) -> Iterator[Client]:
    """The SDK client of one command, with its errors reported as the CLI does."""
    client = open_client(as_json, anonymous=anonymous)
    with client, handle_errors(as_json):
        yield client


#: What an operation's progress counts, read at each poll: ``(done, wanted, unit)``,
#: e.g. ``(1, 3, "replicas ready")`` -- for an operation whose own percentage says
#: too little (a container's replicas coming up one by one).
Steps = Callable[[OperationPublic], tuple[int, int, str]]


def wait_for(
    client: Client,
    operation_id: str,
    as_json: bool,
    *,
    timeout: float | None = WAIT_TIMEOUT,
    steps: Steps | None = None,
) -> OperationPublic:
    """Wait for an operation to end, with a progress bar on stderr (none with --json).

    The bar shows the operation's percentage, or with ``steps`` its count (``2/3
    replicas ready``). The succeeded operation; a failed one raises
    OperationFailedError, which :func:`handle_errors` reports.
    """
    if as_json:
        return client.operations.wait(operation_id, timeout=timeout, poll=WAIT_POLL)
    console = stderr()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"operation {operation_id}", total=100)

        def update(op: OperationPublic) -> None:
            description = f"{escape(op.kind)} {escape(op.status)}"
            if steps is None:
                progress.update(
                    task,
                    completed=100 if op.status == "succeeded" else op.progress,
                    description=description,
                )
                return
            done, wanted, unit = steps(op)
            progress.update(
                task,
                total=max(1, wanted),
                completed=min(done, wanted),
                description=f"{description}: {done}/{wanted} {escape(unit)}",
            )

        return client.operations.wait(
            operation_id, timeout=timeout, poll=WAIT_POLL, on_progress=update
        )


def report_accepted(
    client: Client,
    accepted: Any,
    key: str,
    wait: bool,
    as_json: bool,
    *,
    fetch: Callable[[], BaseModel] | None,
    gone: str | None = None,
) -> None:
    """Report a write answered 202 with ``{message, <key>_id, <key>, operation}``
    (a SnapshotAccepted, VolumeAccepted, ...): what was accepted, or with --wait
    how it ended, the object as ``fetch`` reads it then. A deletion has no
    ``fetch`` but the ``gone`` message."""
    item = getattr(accepted, key)
    if not wait:
        if as_json:
            echo_json(accepted)
            return
        op = accepted.operation
        stdout().print(
            f"{escape(accepted.message)}: {escape(item.name)} ({item.id}), "
            f"status {escape(item.status)}\n"
            f"Operation {op.id}: follow it with `nefos operation wait {op.id}`"
        )
        return
    final = wait_for(client, accepted.operation.id, as_json)
    current = fetch() if fetch is not None else None
    if as_json:
        data: dict[str, Any] = accepted.model_dump(mode="json")
        data[key] = current.model_dump(mode="json") if current is not None else None
        data["operation"] = final.model_dump(mode="json")
        echo_json(data)
    elif current is None:
        stdout().print(escape(gone or f"{accepted.message}: done."))
    else:
        show(current, as_json)


# --- output -------------------------------------------------------------------------
Column = tuple[str, str | Callable[[Any], Any]]  # (header, attribute or function of the item)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def _value(item: Any, attr: str | Callable[[Any], Any]) -> Any:
    return attr(item) if callable(attr) else getattr(item, attr)


def echo_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def show(model: BaseModel, as_json: bool, *, title: str | None = None) -> None:
    """One object: a two-column table of its fields, or its JSON."""
    if as_json:
        echo_json(model)
        return
    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            for sub in type(value).model_fields:
                table.add_row(f"{name}.{sub}", escape(_cell(getattr(value, sub))))
        else:
            table.add_row(name, escape(_cell(value)))
    stdout().print(table)


def listing(
    items: Page[M] | Sequence[M],
    columns: Sequence[Column],
    as_json: bool,
    *,
    empty: str = "Nothing here.",
) -> None:
    """A list: a table with ``columns`` (and the page it is), or its JSON."""
    if as_json:
        echo_json(items if isinstance(items, Page) else list(items))
        return
    rows = items.items if isinstance(items, Page) else items
    console = stdout()
    if not rows:
        console.print(empty)
    else:
        table = Table()
        for header, _ in columns:
            # Ids are copied into the next command: never cut or break one. One id
            # column a table, so that 80 columns still fit (the rest: show, --json).
            is_id = header.endswith("ID")
            table.add_column(
                header, no_wrap=is_id, min_width=36 if is_id else None, overflow="fold"
            )
        for item in rows:
            table.add_row(*(escape(_cell(_value(item, attr))) for _, attr in columns))
        console.print(table)
    if isinstance(items, Page):
        p = items.pagination
        if p.pages is not None and p.pages > 1:
            console.print(f"[dim]Page {p.page} of {p.pages} ({p.total} in all); use --page.[/]")
        if p.next_cursor:
            console.print(f"[dim]Next page: --cursor {p.next_cursor}[/]")


def done(message: str, as_json: bool, data: BaseModel | None = None) -> None:
    """Report a finished action: its message, or the data as JSON."""
    if as_json:
        echo_json(data if data is not None else {"message": message})
    else:
        stdout().print(escape(message))


def config_location() -> str:
    return str(config_path())
