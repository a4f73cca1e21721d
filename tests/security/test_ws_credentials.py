"""WebSocket credentials (issue 14): never written to a log, one-time tickets from
``POST /ws/ticket`` that work across server processes, and the credential in the
``Sec-WebSocket-Protocol`` header."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nefos.db.models import WsTicket
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.events import EventType, make
from nefos.security.redact import RedactCredentials, redact
from tests.api.test_events import bearer, core_of, register, socket, ws_url
from tests.conftest import DatabaseFactory, LiveServer, make_settings, new_installation_id
from tests.processes import serve_env, server

V1 = "/api/v1"
OPEN = 30.0


@pytest.fixture
def live(databases: DatabaseFactory, tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(databases.new_url(), tmp_path / "data", ws_recheck_interval=0.5)
    with LiveServer(settings) as srv:
        yield srv


async def api_key(c: httpx.AsyncClient, token: str, scopes: list[str]) -> str:
    r = await c.post(f"{V1}/api-keys", json={"name": "ws", "scopes": scopes}, headers=bearer(token))
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["key"])


async def ticket(c: httpx.AsyncClient, credential: str, path: str = f"{V1}/ws/ticket") -> str:
    r = await c.post(path, headers=bearer(credential))
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["expires_in"] > 0 and data["expires_at"]
    return str(data["ticket"])


async def hello(ws: ClientConnection) -> dict[str, Any]:
    first: dict[str, Any] = json.loads(await ws.recv())
    return first


async def refused(url: str, **kwargs: Any) -> None:
    """The socket opens, says UNAUTHORIZED and closes with 4401."""
    async with connect(url, open_timeout=OPEN, **kwargs) as ws:
        first = await hello(ws)
        assert first["type"] == "error" and first["data"]["code"] == "UNAUTHORIZED", first
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


# --- logs -------------------------------------------------------------------------------
async def test_no_websocket_credential_reaches_the_server_log(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    if databases.backend == "sqlite":
        pytest.skip("two processes on one database need PostgreSQL (SQLite refuses)")
    # Two `nefos serve` on one database, logging everything (debug: uvicorn's
    # handshake lines with the path and query, the websockets library's headers).
    url = await asyncio.to_thread(databases.new_url)
    common = {"NEFOS_LOG_LEVEL": "debug", "NEFOS_INSTALLATION_ID": new_installation_id()}
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    with (
        server(serve_env(url, tmp_path / "d1", **common), tmp_path, logs[0]) as one,
        server(serve_env(url, tmp_path / "d2", **common), tmp_path, logs[1]) as two,
    ):
        async with httpx.AsyncClient(base_url=one.url, timeout=30) as c:
            user = await register(c)
            jwt = user["access_token"]
            key = await api_key(c, jwt, ["compute:read"])
            secrets = [jwt, jwt.rsplit(".", 1)[1], key, key.removeprefix("nfs_")]
            for credential in (jwt, key):
                for path in ("/ws", "/api/v1/ws", "/api/ws"):
                    target = ws_url(one.url, path, token=credential, after="1")
                    async with connect(target, open_timeout=OPEN) as ws:
                        assert (await hello(ws))["type"] == "connected"
            # a refused browser origin: uvicorn logs the handshake's 403 with its path
            with pytest.raises(InvalidStatus):
                async with connect(
                    ws_url(one.url, token=jwt), origin="https://evil.example", open_timeout=OPEN
                ):
                    pass
            await refused(ws_url(one.url, token=jwt + "x"))
            # the credential in headers: Authorization, the subprotocol
            async with connect(ws_url(one.url), additional_headers=bearer(key)) as ws:
                assert (await hello(ws))["type"] == "connected"
            async with connect(ws_url(one.url), subprotocols=["nefos.v1", f"bearer.{jwt}"]) as ws:  # type: ignore[list-item]
                assert (await hello(ws))["type"] == "connected"
            # a ticket made by one process is taken by the other, once
            one_time = await ticket(c, jwt)
            secrets.append(one_time)
            async with connect(ws_url(two.url, ticket=one_time), open_timeout=OPEN) as ws:
                welcome = await hello(ws)
                assert welcome["type"] == "connected", welcome
                assert welcome["data"]["user_id"] == user["user"]["id"]
            await refused(ws_url(one.url, ticket=one_time))
    text = "\n".join(log.read_text(errors="replace") for log in logs)
    # the handshakes were logged (so the check below is not vacuous) ...
    assert "/ws?token=[redacted]&after=1" in text, text[-3000:]
    assert "ticket=[redacted]" in text
    # ... and no credential was
    leaked = [s[:12] for s in secrets if s in text]
    assert leaked == [], text[-3000:]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # uvicorn's WebSocket lines (websockets, websockets-sansio and wsproto alike)
        (
            ('%s - "WebSocket %s" [accepted]', ("127.0.0.1:5", "/ws?token=s3cret&a=1")),
            '127.0.0.1:5 - "WebSocket /ws?token=[redacted]&a=1" [accepted]',
        ),
        (
            ('%s - "WebSocket %s" 403', ("127.0.0.1:5", "/api/ws?a=1&ticket=s3cret")),
            '127.0.0.1:5 - "WebSocket /api/ws?a=1&ticket=[redacted]" 403',
        ),
        # its access log
        (
            ('%s - "%s %s HTTP/%s" %d', ("1.2.3.4:9", "GET", "/x?api_key=s3cret", "1.1", 200)),
            '1.2.3.4:9 - "GET /x?api_key=[redacted] HTTP/1.1" 200',
        ),
        # the websockets library's handshake headers (debug)
        (("< %s: %s", ("Authorization", "Bearer s3cret")), "< Authorization: [redacted]"),
        (
            ("< %s: %s", ("Sec-WebSocket-Protocol", "nefos.v1, bearer.s3cret")),
            "< Sec-WebSocket-Protocol: [redacted]",
        ),
        (("< %s: %s", ("X-API-Key", "nfs_s3cret")), "< X-API-Key: [redacted]"),
        (("calling with access_token=s3cret", ()), "calling with access_token=[redacted]"),
        # a percent-encoded parameter name (Starlette decodes it and takes the
        # credential): caught by the credential's own shape
        (
            ('"WebSocket %s"', ("/ws?%74oken=eyJhbGciOi.eyJzdWIiOi.s3cret",)),
            '"WebSocket /ws?%74oken=[redacted]"',
        ),
        (("key %s", ("nfs_AbCdEfGh_s3cret",)), "key [redacted]"),
        (("ticket %s", ("nft_AbCdEfGh-s3cret",)), "ticket [redacted]"),
    ],
)
def test_the_log_filter_redacts_every_form_of_credential(
    args: tuple[str, tuple[Any, ...]], expected: str
) -> None:
    msg, values = args
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, values, None)
    assert RedactCredentials().filter(record)
    assert record.getMessage() == expected
    assert "s3cret" not in record.getMessage()


def test_the_log_filter_redacts_tracebacks_and_keeps_the_access_logs_arguments() -> None:
    try:
        raise RuntimeError("GET /ws?token=s3cret failed")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    RedactCredentials().filter(record)
    assert (
        record.exc_text
        and "s3cret" not in record.exc_text
        and "token=[redacted]" in record.exc_text
    )
    # uvicorn's AccessFormatter unpacks the five arguments: they stay a tuple
    access = ("1.2.3.4:9", "GET", "/ws?token=s3cret", "1.1", 101)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", access, None)
    RedactCredentials().filter(record)
    assert isinstance(record.args, tuple) and record.args[2] == "/ws?token=[redacted]"
    assert redact("no credential here ?page=2&tokens=1") == "no credential here ?page=2&tokens=1"


# --- tickets ----------------------------------------------------------------------------
async def test_a_ticket_opens_one_socket_once_and_sees_only_its_tenant(live: LiveServer) -> None:
    core = core_of(live)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        a, b = await register(c), await register(c)
        # refused without credentials, like every authenticated route
        r = await c.post(f"{V1}/ws/ticket")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        for path in (f"{V1}/ws/ticket", "/api/ws/ticket", "/ws/ticket"):
            await ticket(c, a["access_token"], path)
        one_time = await ticket(c, a["access_token"])
        async with connect(ws_url(live.url, ticket=one_time), open_timeout=OPEN) as ws:
            welcome = await hello(ws)
            assert welcome["type"] == "connected" and welcome["data"]["user_id"] == a["user"]["id"]
            core.events.publish(
                make(EventType.OPERATION, {"who": "b"}, project_id=b["user"]["default_project_id"])
            )
            core.events.publish(
                make(EventType.OPERATION, {"who": "a"}, project_id=a["user"]["default_project_id"])
            )
            event = json.loads(await asyncio.wait_for(ws.recv(), OPEN))
            assert event["type"] == "operation_update" and event["data"]["who"] == "a", event
        # a replay is refused, on every path
        await refused(ws_url(live.url, ticket=one_time))
        await refused(ws_url(live.url, "/api/v1/ws", ticket=one_time))
        await refused(ws_url(live.url, ticket="nft_not-a-ticket"))


async def test_an_expired_ticket_is_refused(live: LiveServer) -> None:
    core = core_of(live)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        a = await register(c)
        one_time = await ticket(c, a["access_token"])
        # the server's engine lives on its own loop: an engine of this test's
        db = Database(core.db.url)
        try:
            async with db.sessionmaker() as session:
                await begin_write(session)
                await session.execute(
                    update(WsTicket).values(expires_at=utcnow() - timedelta(seconds=1))
                )
                await session.commit()
        finally:
            await db.dispose()
        await refused(ws_url(live.url, ticket=one_time))


async def test_a_tickets_principal_keeps_its_scopes_and_its_revocation(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        a = await register(c)
        # a ticket is the caller's own account's business: account:read
        key = await api_key(c, a["access_token"], ["account:read", "compute:read"])
        key_id = (await c.get(f"{V1}/api-keys", headers=bearer(a["access_token"]))).json()["data"][
            "items"
        ][0]["id"]
        async with connect(ws_url(live.url, ticket=await ticket(c, key)), open_timeout=OPEN) as ws:
            welcome = await hello(ws)
            assert welcome["data"]["subscriptions"] == [
                "container_status_update",
                "load_test_update",
                "operation_update",
                "service_health_changed",
                "vm_status_changed",
            ]
            r = await c.delete(f"{V1}/api-keys/{key_id}", headers=bearer(a["access_token"]))
            assert r.status_code in (200, 204), r.text
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), OPEN)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        # a session's ticket: logging out closes the socket, and a spare ticket opens nothing
        spare = await ticket(c, a["access_token"])
        async with connect(
            ws_url(live.url, ticket=await ticket(c, a["access_token"])), open_timeout=OPEN
        ) as ws:
            assert (await hello(ws))["type"] == "connected"
            r = await c.post(f"{V1}/auth/logout", headers=bearer(a["access_token"]))
            assert r.status_code in (200, 204), r.text
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), OPEN)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        await refused(ws_url(live.url, ticket=spare))


# --- Sec-WebSocket-Protocol -------------------------------------------------------------
async def test_the_subprotocol_carries_the_credential_and_is_never_echoed(
    live: LiveServer,
) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        a = await register(c)
        key = await api_key(c, a["access_token"], ["compute:read"])
        for credential in (a["access_token"], key):
            async with connect(
                ws_url(live.url, "/api/v1/ws"),
                subprotocols=["nefos.v1", f"bearer.{credential}"],  # type: ignore[list-item]
                open_timeout=OPEN,
            ) as ws:
                assert ws.subprotocol == "nefos.v1"
                assert ws.response is not None
                assert ws.response.headers["Sec-WebSocket-Protocol"] == "nefos.v1"
                assert credential not in str(ws.response.headers)
                welcome = await hello(ws)
                assert welcome["data"]["user_id"] == a["user"]["id"]
        await refused(
            ws_url(live.url),
            subprotocols=["nefos.v1", f"bearer.{a['access_token']}x"],  # type: ignore[list-item]
        )
        await refused(ws_url(live.url), subprotocols=["nefos.v1"])  # type: ignore[list-item]
    async with socket(live.url, a["access_token"]) as s:  # ?token= keeps working
        assert s.closed is None
