"""WS /ws: tenants' events on real sockets, narrowing, revocation, origins, Redis fan-out
across two `nefos serve` processes, and Redis going away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nefos.db.session import begin_write
from nefos.events import EventType, make
from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    TEST_IMAGE,
    DatabaseFactory,
    LiveServer,
    docker_host_uri,
    free_port,
    make_settings,
    new_installation_id,
    remove_managed_containers,
)
from tests.processes import dies_with_us, serve_env, server

V1 = "/api/v1"
WAIT = 60.0


# --- helpers --------------------------------------------------------------------------
def ws_url(base: str, path: str = "/ws", **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return base.replace("http://", "ws://") + path + (f"?{q}" if q else "")


class Socket:
    """A WebSocket client that keeps every message it got."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self._task = asyncio.create_task(self._read())
        self._arrived = asyncio.Event()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
                self._arrived.set()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._arrived.set()

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("id") and (type_ is None or m["type"] == type_)]

    async def until(self, check: Any, what: str, within: float = WAIT) -> Any:
        deadline = time.monotonic() + within
        while True:
            found = check(self)
            if found:
                return found
            if self._task.done() and self.closed is not None and not check(self):
                raise AssertionError(f"socket closed ({self.closed}) before {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}: {self.messages[-10:]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 1.0))

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await self._task


@contextlib.asynccontextmanager
async def socket(base: str, token: str, **kwargs: Any) -> AsyncIterator[Socket]:
    # A loaded CI machine (three test workers, each with live servers) can take
    # more than the default 10 s to answer a handshake.
    kwargs.setdefault("open_timeout", 30)
    async with connect(ws_url(base, token=token), **kwargs) as ws:
        s = Socket(ws)
        await s.until(lambda s: any(m["type"] == "connected" for m in s.messages), "connected")
        try:
            yield s
        finally:
            await s.close()


async def login_admin(c: httpx.AsyncClient) -> str:
    r = await c.post(f"{V1}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["access_token"])


async def register(c: httpx.AsyncClient) -> dict[str, Any]:
    email = f"ws-{uuid.uuid4().hex[:10]}@example.com"
    r = await c.post(f"{V1}/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return dict(r.json()["data"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def live(databases: DatabaseFactory, tmp_path: Path) -> Iterator[LiveServer]:
    """A Nefos of its own on a real socket, re-checking sockets every 0.5 s."""
    settings = make_settings(
        databases.new_url(),
        tmp_path / "data",
        ws_recheck_interval=0.5,
        ws_allowed_origins=["https://console.example"],
    )
    with LiveServer(settings) as srv:
        yield srv


def core_of(srv: LiveServer) -> Any:
    return srv.server.config.app.state.core


# --- one process ----------------------------------------------------------------------
async def test_each_tenant_sees_its_own_container_events_only(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        admin = await login_admin(c)
        r = await c.post(
            f"{V1}/resources/hosts",
            json={"hostname": "podman-ws", "driver": "docker", "uri": docker_host_uri()},
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
        a, b = await register(c), await register(c)
        try:
            async with (
                socket(live.url, a["access_token"]) as sa,
                socket(live.url, b["access_token"]) as sb,
                socket(live.url, admin) as sadmin,
            ):
                welcome = next(m for m in sa.messages if m["type"] == "connected")
                assert welcome["data"]["user_id"] == a["user"]["id"]
                assert "host_status_changed" not in welcome["data"]["subscriptions"]
                r = await c.post(
                    f"{V1}/containers",
                    json={"name": "ws-web", "image": TEST_IMAGE},
                    headers=bearer(a["access_token"]),
                )
                assert r.status_code == 202, r.text
                cid = r.json()["data"]["container_id"]
                op_id = r.json()["data"]["operation"]["id"]

                def running(s: Socket) -> bool:
                    return any(
                        e["data"]["container_id"] == cid and e["data"]["status"] == "running"
                        for e in s.events("container_status_update")
                    )

                await sa.until(running, "A's container running")
                statuses = [
                    e["data"]["status"]
                    for e in sa.events("container_status_update")
                    if e["data"]["container_id"] == cid
                ]
                assert statuses[0] == "creating" and statuses[-1] == "running", statuses
                event = sa.events("container_status_update")[-1]
                assert event["data"]["project_id"] == a["user"]["default_project_id"]
                assert event["timestamp"] and event["data"]["timestamp"]
                await sa.until(
                    lambda s: any(
                        e["data"]["operation_id"] == op_id and e["data"]["status"] == "succeeded"
                        for e in s.events("operation_update")
                    ),
                    "the create's operation succeeding",
                )
                # The platform admin sees every tenant; B sees nothing of A's.
                await sadmin.until(running, "the admin seeing A's container")
                r = await c.delete(f"{V1}/containers/{cid}", headers=bearer(a["access_token"]))
                assert r.status_code == 202, r.text
                await sa.until(
                    lambda s: any(
                        e["data"]["status"] == "deleted"
                        for e in s.events("container_status_update")
                    ),
                    "A's container deleted",
                )
                await sadmin.until(
                    lambda s: any(
                        e["data"]["status"] == "deleted"
                        for e in s.events("container_status_update")
                    ),
                    "the admin seeing the delete",
                )
                assert sb.events() == [], sb.events()
        finally:
            remove_managed_containers()


async def test_subscribe_narrows_and_bad_messages_get_an_error(live: LiveServer) -> None:
    core = core_of(live)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        a = await register(c)
        project = a["user"]["default_project_id"]
        async with socket(live.url, a["access_token"]) as s:
            await s.send({"subscribe": ["operation_update"]})
            ack = await s.until(
                lambda s: [m for m in s.messages if m["type"] == "subscribed"], "subscribed"
            )
            assert ack[-1]["data"] == {"types": ["operation_update"], "refused": []}
            for type_ in (EventType.METRICS, EventType.OPERATION):
                core.events.publish(make(type_, {"n": 1}, project_id=project))
            await s.until(lambda s: s.events("operation_update"), "the operation event")
            await s.send({"type": "ping"})
            await s.until(lambda s: any(m["type"] == "pong" for m in s.messages), "pong")
            assert s.events("metrics_update") == []
            await s.send({"subscribe": ["no_such_event"]})
            await s.send({"hello": 1})
            await s.ws.send("not json")
            errors = await s.until(
                lambda s: len([m for m in s.messages if m["type"] == "error"]) >= 3 and s.messages,
                "three errors",
            )
            codes = [m["data"]["code"] for m in errors if m["type"] == "error"]
            assert codes == ["VALIDATION_ERROR"] * 3
            # host events are for platform admins: asking for them is refused, not granted
            await s.send({"subscribe": ["host_status_changed", "metrics_update"]})
            await s.until(
                lambda s: [
                    m
                    for m in s.messages
                    if m["type"] == "subscribed" and m["data"]["refused"] == ["host_status_changed"]
                ],
                "the refusal of host events",
            )
            core.events.publish(make(EventType.HOST_STATUS, {"host_id": "h"}))
            core.events.publish(make(EventType.METRICS, {"n": 2}, project_id=project))
            await s.until(lambda s: s.events("metrics_update"), "the metrics event")
            assert s.events("host_status_changed") == []
            assert s.closed is None


async def test_credentials_and_origins_are_checked(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        a = await register(c)
        # No token, a bad token: told why, then closed with 4401.
        for url in (ws_url(live.url), ws_url(live.url, token="nope")):
            async with connect(url, open_timeout=30) as ws:
                first = json.loads(await ws.recv())
                assert first["type"] == "error" and first["data"]["code"] == "UNAUTHORIZED"
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        # A foreign browser origin is refused at the handshake; allowed ones pass.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                ws_url(live.url, token=a["access_token"]),
                origin="https://evil.example",
                open_timeout=30,
            ):
                pass
        assert refused.value.response.status_code == 403
        for origin in ("https://console.example", live.url):
            async with socket(live.url, a["access_token"], origin=origin) as s:
                assert s.closed is None
        # The API key works as a token too, under /api/v1/ws and /api/ws.
        r = await c.post(
            f"{V1}/api-keys",
            json={"name": "ws", "scopes": ["compute:read"]},
            headers=bearer(a["access_token"]),
        )
        assert r.status_code == 201, r.text
        key = r.json()["data"]["key"]
        for path in ("/api/v1/ws", "/api/ws"):
            async with connect(ws_url(live.url, path, token=key), open_timeout=30) as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "connected"
                # its scope bounds what it may receive
                assert hello["data"]["subscriptions"] == [
                    "container_status_update",
                    "load_test_update",
                    "operation_update",
                    "service_health_changed",
                    "vm_status_changed",
                ]


async def test_logout_and_a_lost_membership_close_the_socket(live: LiveServer) -> None:
    core = core_of(live)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        owner, member = await register(c), await register(c)
        r = await c.post(
            f"{V1}/organisations", json={"name": "ws-org"}, headers=bearer(owner["access_token"])
        )
        assert r.status_code == 201, r.text
        org = r.json()["data"]["id"]
        r = await c.post(
            f"{V1}/organisations/{org}/members",
            json={"email": member["user"]["email"], "role": "viewer"},
            headers=bearer(owner["access_token"]),
        )
        assert r.status_code == 202, r.text
        token = r.json()["data"]["token"]
        r = await c.post(
            f"{V1}/invitations/accept",
            json={"token": token},
            headers=bearer(member["access_token"]),
        )
        assert r.status_code == 200, r.text
        r = await c.post(
            f"{V1}/projects",
            json={"name": "ws-proj", "organisation_id": org},
            headers=bearer(owner["access_token"]),
        )
        assert r.status_code == 201, r.text
        project = r.json()["data"]["id"]
        async with socket(live.url, member["access_token"]) as s:
            core.events.publish(make(EventType.OPERATION, {"x": 1}, project_id=project))
            await s.until(lambda s: s.events("operation_update"), "the org's event")
            r = await c.delete(
                f"{V1}/organisations/{org}/members/{member['user']['id']}",
                headers=bearer(owner["access_token"]),
            )
            assert r.status_code in (200, 204), r.text
            await s.until(lambda s: s.closed is not None, "the close after the removal")
            assert s.closed is not None and s.closed.rcvd is not None
            assert s.closed.rcvd.code == 4403
        async with socket(live.url, owner["access_token"]) as s:
            r = await c.post(f"{V1}/auth/logout", headers=bearer(owner["access_token"]))
            assert r.status_code in (200, 204), r.text
            await s.until(lambda s: s.closed is not None, "the close after the logout")
            assert s.closed is not None and s.closed.rcvd is not None
            assert s.closed.rcvd.code == 4401


async def test_health_reports_each_dependency(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        for path in ("/health", "/api/health", "/api/v1/health"):
            r = await c.get(path)
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data["status"] == "healthy", data
            assert data["services"] == {
                "database": "healthy",
                "event_bus": "healthy",
                "redis": "disabled",
                "orchestrator": "healthy",
                "billing": "healthy",
                "rate_limiter": "healthy",
                "hosts": "none",
            }
        admin = await login_admin(c)
        r = await c.post(
            f"{V1}/resources/hosts",
            json={"hostname": "podman-health", "driver": "docker", "uri": docker_host_uri()},
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
        core_of(live).events  # noqa: B018 - the same process
        live.server.config.app.state.health = None  # no cached host pings
        r = await c.get("/health")
        assert r.json()["data"]["services"]["hosts"] == "healthy"


# --- Redis ------------------------------------------------------------------------------
class Redis:
    """A redis-server of the test's own, on a free port, that the test may stop."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is installed by scripts/ensure-redis.sh (make services)"
        self.proc = subprocess.Popen(  # noqa: S603 - the test's own server
            [
                exe,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=dies_with_us(),  # noqa: PLW1509 - set before the exec, main thread
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                import socket as so

                with so.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


async def test_redis_fans_out_across_two_server_processes(
    databases: DatabaseFactory, tmp_path: Path
) -> None:
    if databases.backend == "sqlite":
        pytest.skip("two processes on one database need PostgreSQL (SQLite refuses)")
    redis_url = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert redis_url, "make services starts Redis (NEFOS_TEST_REDIS_URL)"
    url = await asyncio.to_thread(databases.new_url)  # it runs a loop of its own
    prefix = f"nefos-test-{uuid.uuid4().hex[:8]}"
    common = {
        "NEFOS_REDIS_URL": redis_url,
        "NEFOS_REDIS_PREFIX": prefix,
        "NEFOS_WORKERS": "2",
        # One installation (one database), of this test session: remove_managed_containers
        # then removes what the two processes made.
        "NEFOS_INSTALLATION_ID": new_installation_id(),
    }
    env1 = serve_env(url, tmp_path / "d1", **common)
    env2 = serve_env(url, tmp_path / "d2", **common)
    with (
        server(env1, tmp_path, tmp_path / "one.log") as one,
        server(env2, tmp_path, tmp_path / "two.log") as two,
    ):
        async with (
            httpx.AsyncClient(base_url=one.url, timeout=30) as c1,
            httpx.AsyncClient(base_url=two.url, timeout=30) as c2,
        ):
            assert (await c1.get("/health")).json()["data"]["services"]["redis"] == "healthy"
            admin = await login_admin(c1)
            user = await register(c2)
            try:
                async with (
                    socket(one.url, admin) as admin_on_one,
                    socket(one.url, user["access_token"]) as user_on_one,
                    socket(two.url, user["access_token"]) as user_on_two,
                ):
                    # A host registered through process two: the admin on one hears it.
                    r = await c2.post(
                        f"{V1}/resources/hosts",
                        json={
                            "hostname": "podman-fan",
                            "driver": "docker",
                            "uri": docker_host_uri(),
                        },
                        headers=bearer(admin),
                    )
                    assert r.status_code == 201, r.text
                    await admin_on_one.until(
                        lambda s: s.events("host_status_changed"), "the host event on one"
                    )
                    # A container made through process one: the user hears it on both,
                    # each event once, whichever process's worker ran the operation.
                    r = await c1.post(
                        f"{V1}/containers",
                        json={"name": "fan", "image": TEST_IMAGE},
                        headers=bearer(user["access_token"]),
                    )
                    assert r.status_code == 202, r.text
                    op_id = r.json()["data"]["operation"]["id"]

                    def done(s: Socket) -> bool:
                        return any(
                            e["data"]["operation_id"] == op_id
                            and e["data"]["status"] == "succeeded"
                            for e in s.events("operation_update")
                        )

                    for s in (user_on_one, user_on_two):
                        await s.until(done, "the operation's success")
                    for s in (user_on_one, user_on_two):
                        ids = [e["id"] for e in s.events()]
                        assert len(ids) == len(set(ids)), "an event came twice"
                    assert {e["id"] for e in user_on_one.events()} == {
                        e["id"] for e in user_on_two.events()
                    }
                    assert user_on_one.events("host_status_changed") == []
            finally:
                remove_managed_containers()


async def test_redis_going_away_degrades_health_and_one_process_keeps_its_events(
    databases: DatabaseFactory, tmp_path: Path, redis_server: Redis
) -> None:
    settings = make_settings(
        await asyncio.to_thread(databases.new_url),
        tmp_path / "data",
        redis_url=redis_server.url,
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
    )
    with LiveServer(settings) as live:
        core = core_of(live)
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
            data = (await c.get("/health")).json()["data"]
            assert data["services"]["redis"] == "healthy" and data["status"] == "healthy"
            a = await register(c)
            project = a["user"]["default_project_id"]
            async with socket(live.url, a["access_token"]) as s:
                core.events.publish(make(EventType.OPERATION, {"n": 1}, project_id=project))
                await s.until(lambda s: len(s.events()) == 1, "the event through Redis")
                redis_server.stop()
                r = await c.get("/health")
                assert r.status_code == 200  # degraded, not down
                data = r.json()["data"]
                assert data["services"]["redis"] == "unhealthy" and data["status"] == "degraded"
                for n in (2, 3):
                    core.events.publish(make(EventType.OPERATION, {"n": n}, project_id=project))
                await s.until(lambda s: len(s.events()) == 3, "the events without Redis")
                assert [e["data"]["n"] for e in s.events()] == [1, 2, 3]


# --- capture: told at commit, never for what was rolled back ---------------------------
async def test_status_changes_are_told_at_commit_and_never_after_a_rollback(
    client: httpx.AsyncClient, app: Any, admin: Any
) -> None:
    from nefos.db.models import Host

    core = app.state.core
    with core.events.subscribe(
        lambda e: e.type == "host_status_changed" and e.data["hostname"] == "sim-ev"
    ) as told:
        r = await client.post(
            f"{V1}/resources/hosts",
            json={
                "hostname": "sim-ev",
                "driver": "sim",
                "uri": "sim://sim-ev?cpus=4&memory_mb=8192",
            },
            headers=admin.headers,
        )
        assert r.status_code == 201, r.text
        host_id = r.json()["data"]["id"]
        # The host's creation is told first (the bus may deliver it after the response
        # went): wait for it, so that what follows is all that is left to tell.
        created = await asyncio.wait_for(told.get(), 10)
        assert (created.data["previous_status"], created.data["status"]) == (None, "active")
        async with core.db.sessionmaker() as session:
            await begin_write(session)
            host = await session.get(Host, host_id)
            assert host is not None
            host.status = "offline"
            await session.flush()  # flushed, so seen: but rolled back, so never told
            await session.rollback()
            await begin_write(session)
            host = await session.get(Host, host_id, populate_existing=True)
            assert host is not None and host.status == "active"
            host.status = "offline"
            host.last_error = "cable pulled"
            await session.commit()
        event = await asyncio.wait_for(told.get(), 10)
        assert event.is_platform
        assert (event.data["previous_status"], event.data["status"]) == ("active", "offline")
        assert event.data["reason"] == "cable pulled"
        await asyncio.sleep(0.2)
        assert told.get_nowait() is None
