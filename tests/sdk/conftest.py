"""SDK fixtures: real servers on real sockets, and a transport that records calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nefos.sdk import Client
from tests.conftest import ADMIN_PASSWORD, PASSWORD, DatabaseFactory, LiveServer, make_settings

SHORT_TTL = 60  # the shortest access-token lifetime Settings allows


class Recorder(httpx.HTTPTransport):
    """A real HTTP transport that notes (method, path under /api/v1, status) of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        path = request.url.path.removeprefix("/api/v1")
        self.calls.append((request.method, path, response.status_code))
        return response

    def paths(self) -> list[str]:
        return [f"{m} {p} {s}" for m, p, s in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def short_ttl_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A live server whose access tokens live one minute."""
    settings = make_settings(
        databases.new_url(), tmp_path_factory.mktemp("short"), access_token_ttl=SHORT_TTL
    )
    with LiveServer(settings) as server:
        yield server


def unique_email(prefix: str = "sdk") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def new_user(live_server: LiveServer) -> Iterator[Any]:
    """Register a fresh user; returns a logged-in Client (closed at teardown)."""
    clients: list[Client] = []

    def _new_user(url: str | None = None, **kwargs: Any) -> Client:
        email = kwargs.pop("email", None) or unique_email()
        client = Client(url or live_server.url, **kwargs)
        clients.append(client)
        client.auth.register(email=email, password=PASSWORD)
        return client

    yield _new_user
    for c in clients:
        c.close()


@pytest.fixture
def admin_client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        yield client
