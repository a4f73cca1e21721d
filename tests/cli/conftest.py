"""CLI fixtures: the `nefos` app driven by CliRunner against a live server."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from nefos.cli.main import app
from nefos.sdk import Client
from tests.conftest import ADMIN_PASSWORD, PASSWORD, LiveServer
from tests.sdk.conftest import BOOT_SECONDS, libvirt, libvirt_teardown

__all__ = ["libvirt", "libvirt_teardown"]  # fixtures shared with the SDK tests

ENV_VARS = ("NEFOS_URL", "NEFOS_API_KEY", "NEFOS_PASSWORD", "NEFOS_NEW_USER_PASSWORD")


@dataclass
class Cli:
    """Runs `nefos ...` with its own config file."""

    config: Path
    url: str

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        runner = CliRunner()
        environment = {"NEFOS_CONFIG": str(self.config), "COLUMNS": "200", **env}
        return runner.invoke(app, list(args), input=input, env=environment)

    def json(self, *args: str, **env: str) -> Any:
        """Run with --json; the command must succeed. Returns the parsed stdout."""
        result = self(*args, "--json", **env)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def stored(self) -> dict[str, Any]:
        return dict(json.loads(self.config.read_text()))

    def login(self, email: str, password: str = PASSWORD) -> None:
        result = self("login", "--url", self.url, "--email", email, "--password", password)
        assert result.exit_code == 0, (result.stdout, result.stderr)

    def login_admin(self) -> None:
        """Log in as the platform admin that the server made at start-up."""
        result = self(
            "login", "--url", self.url, "--username", "admin", "--password", ADMIN_PASSWORD
        )
        assert result.exit_code == 0, (result.stdout, result.stderr)

    def console_until(self, vm_id: str, needle: str, count: int = 1) -> str:
        """`nefos vm console` once ``needle`` is on it ``count`` times."""
        deadline = time.monotonic() + BOOT_SECONDS
        while True:
            text = ok(self("vm", "console", vm_id, "--tail", "2000"))
            if text.count(needle) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} x{count} not on the console:\n{text}")
            time.sleep(0.5)


def ok(result: Result) -> str:
    """The stdout of a command that must succeed."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def no_traceback(result: Result) -> None:
    """A failed command reported its error, and did not crash."""
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_cli(live_server: LiveServer, tmp_path: Path) -> Callable[[], Cli]:
    """A CLI with a config file of its own (one per simulated person)."""

    def _make() -> Cli:
        return Cli(config=tmp_path / uuid.uuid4().hex[:8] / "config.json", url=live_server.url)

    return _make


@pytest.fixture
def cli(make_cli: Callable[[], Cli]) -> Cli:
    return make_cli()


def register(url: str, email: str | None = None) -> str:
    """Make an account (through the SDK: the CLI has no sign-up); returns its e-mail."""
    email = email or f"cli-{uuid.uuid4().hex[:10]}@example.com"
    with Client(url) as c:
        c.auth.register(email=email, password=PASSWORD)
    return email


@pytest.fixture
def user(cli: Cli) -> str:
    """A fresh user, logged in with `cli`; returns the e-mail."""
    email = register(cli.url)
    cli.login(email)
    return email


@pytest.fixture
def admin_cli(make_cli: Callable[[], Cli]) -> Cli:
    """A CLI logged in as the platform admin."""
    cli = make_cli()
    cli.login_admin()
    return cli
