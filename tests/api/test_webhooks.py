"""Webhook deliveries to a real HTTP receiver on loopback (allowed here by the admin
setting ``webhook_allowed_networks``): signed, retried with backoff, logged, never
redirected, and refused at delivery time once the allowance is gone.

The app's own dispatcher is stopped for these tests (but the last): each test
sends with ``run_once(now=...)``, so the retry schedule is checked on the times
the dispatcher computes, never on how long anything took."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from nefos.api.app import create_app
from nefos.config import Settings
from nefos.db.models import Container
from nefos.monitoring.types import Metric, ResourceKind, Sample
from nefos.monitoring.webhooks import WebhookDispatcher, verify_signature
from tests.conftest import Account, DatabaseFactory, make_settings

V1 = "/api/v1"
RETRY_BASE = 30.0
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def webhook_settings(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return make_settings(
        databases.new_url(),
        Path(tmp_path_factory.mktemp("webhooks")),
        webhook_allowed_networks=["127.0.0.0/8", "::1/128"],
        webhook_retry_base=RETRY_BASE,
        webhook_max_attempts=MAX_ATTEMPTS,
        webhook_timeout=10,
    )


@pytest.fixture(scope="module")
async def app(webhook_settings: Settings) -> AsyncIterator[Any]:
    """An app of this module's own: loopback allowed, its dispatcher stopped."""
    application = create_app(webhook_settings)
    async with application.router.lifespan_context(application):
        await application.state.webhooks.stop()
        yield application


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering each request with the next
    of ``statuses`` (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    location: str = "http://127.0.0.1:9/elsewhere"
    requests: list[Received] = field(default_factory=list)
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/nefos?x=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Received(method, path, headers, body))
        status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        extra = f"Location: {self.location}\r\n" if 300 <= status < 400 else ""
        head = f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n{extra}Connection: close\r\n"
        writer.write(head.encode() + b"\r\nok")
        await writer.drain()
        writer.close()
        self.arrived.set()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    yield r
    r.server.close()
    await r.server.wait_closed()


async def ok(client: httpx.AsyncClient, method: str, path: str, who: Account, **kw: Any) -> Any:
    r = await client.request(method, V1 + path, headers=who.headers, **kw)
    assert r.is_success, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()["data"]


def dispatcher(app: Any) -> WebhookDispatcher:
    d: WebhookDispatcher = app.state.webhooks
    return d


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def deliveries(client: httpx.AsyncClient, who: Account, hook_id: str) -> list[Any]:
    data = await ok(client, "GET", f"/monitoring/webhooks/{hook_id}/deliveries", who)
    assert data["deliveries"] == data["items"]
    return list(data["items"])


def check_signature(received: Received, secret: str) -> None:
    header = received.headers["x-nefos-signature"]
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    assert abs(int(t) - time.time()) < 3600
    expected = hmac.new(
        secret.encode(), f"{t}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(v1, expected)
    assert verify_signature(secret, header, received.body)
    assert not verify_signature("whsec_wrong", header, received.body)
    assert not verify_signature(secret, header, received.body + b" ")


async def test_an_alert_is_delivered_signed(client, register, app, receiver) -> None:
    user = await register()
    hook = await ok(client, "POST", "/monitoring/webhooks", user, json={"url": receiver.url})
    secret = hook["secret"]
    await ok(
        client,
        "POST",
        "/monitoring/alert-rules",
        user,
        json={"name": "hot", "metric": "cpu_percent", "threshold": 50, "severity": "info"},
    )
    async with app.state.core.db.sessionmaker() as session:
        c = Container(
            project_id=user.project_id,
            name="hot",
            image="localhost/none:absent",
            cpu_milli=100,
            memory_mb=8,
            status="running",
        )
        session.add(c)
        await session.commit()
    now = datetime.now(UTC)
    sample = Sample(ResourceKind.CONTAINER, c.id, Metric.CPU_PERCENT, 75.5, now, user.project_id)
    await app.state.alert_engine.on_samples([sample])
    (pending,) = await deliveries(client, user, hook["id"])
    assert (pending["status"], pending["event_type"], pending["attempts"]) == (
        "pending",
        "alert.firing",
        0,
    )
    assert await dispatcher(app).run_once() == 1
    (got,) = receiver.requests
    assert got.method == "POST" and got.path == "/hooks/nefos?x=1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-nefos-event"] == "alert.firing"
    assert got.headers["x-nefos-delivery"] == pending["id"]
    assert got.headers["host"] == receiver.url.split("/")[2]
    check_signature(got, secret)
    payload = orjson.loads(got.body)
    assert payload["type"] == "alert.firing" and payload["id"] == pending["event_id"]
    alert = payload["data"]["alert"]
    assert (alert["status"], alert["resource_id"], alert["value"]) == ("firing", c.id, 75.5)
    (done,) = await deliveries(client, user, hook["id"])
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("succeeded", 1, 200)
    assert done["delivered_at"] is not None and done["log"][0]["status_code"] == 200
    # Resolving is told too.
    await app.state.alert_engine.on_samples(
        [Sample(ResourceKind.CONTAINER, c.id, Metric.CPU_PERCENT, 10, now, user.project_id)]
    )
    assert await dispatcher(app).run_once() == 1
    assert receiver.requests[1].headers["x-nefos-event"] == "alert.resolved"
    check_signature(receiver.requests[1], secret)
    assert orjson.loads(receiver.requests[1].body)["data"]["alert"]["status"] == "resolved"


async def test_a_failing_receiver_is_retried_with_backoff_then_given_up(
    client, register, app, receiver
) -> None:
    receiver.statuses = [500]
    user = await register()
    hook = await ok(client, "POST", "/monitoring/webhooks", user, json={"url": receiver.url})
    ping = await ok(client, "POST", f"/monitoring/webhooks/{hook['id']}/test", user)
    assert (ping["event_type"], ping["status"]) == ("ping", "pending")
    d = dispatcher(app)
    assert await d.run_once() == 1
    (one,) = await deliveries(client, user, hook["id"])
    assert (one["status"], one["attempts"], one["last_status_code"]) == ("pending", 1, 500)
    assert "HTTP 500" in one["last_error"]
    first_at = datetime.fromisoformat(one["log"][0]["at"])
    due = datetime.fromisoformat(one["next_attempt_at"])
    assert due - first_at == timedelta(seconds=RETRY_BASE)
    # Not due yet: nothing is sent.
    assert await d.run_once(now=due - timedelta(seconds=1)) == 0
    assert len(receiver.requests) == 1
    # Due: the second attempt, then the delay doubles.
    assert await d.run_once(now=due) == 1
    (two,) = await deliveries(client, user, hook["id"])
    assert two["attempts"] == 2 and two["status"] == "pending"
    second_at = datetime.fromisoformat(two["log"][1]["at"])
    due = datetime.fromisoformat(two["next_attempt_at"])
    assert due - second_at == timedelta(seconds=2 * RETRY_BASE)
    assert await d.run_once(now=due) == 1
    (three,) = await deliveries(client, user, hook["id"])
    assert (three["status"], three["attempts"], three["next_attempt_at"]) == ("failed", 3, None)
    assert [entry["status_code"] for entry in three["log"]] == [500, 500, 500]
    assert [entry["attempt"] for entry in three["log"]] == [1, 2, 3]
    assert len(receiver.requests) == MAX_ATTEMPTS
    assert await d.run_once(now=later(3600)) == 0  # given up: never again
    failed = await ok(
        client,
        "GET",
        f"/monitoring/webhooks/{hook['id']}/deliveries",
        user,
        params={"status": "failed"},
    )
    assert [x["id"] for x in failed["items"]] == [ping["id"]]
    for entry in three["log"]:
        check_signature(receiver.requests[entry["attempt"] - 1], hook["secret"])


async def test_a_redirect_is_not_followed(client, register, app, receiver) -> None:
    receiver.statuses = [302]
    user = await register()
    hook = await ok(client, "POST", "/monitoring/webhooks", user, json={"url": receiver.url})
    await ok(client, "POST", f"/monitoring/webhooks/{hook['id']}/test", user)
    assert await dispatcher(app).run_once() == 1
    (one,) = await deliveries(client, user, hook["id"])
    assert one["last_status_code"] == 302 and "redirect not followed" in one["last_error"]
    assert len(receiver.requests) == 1


async def test_an_address_allowed_at_creation_is_checked_again_at_delivery(
    client, register, app, receiver
) -> None:
    user = await register()
    hook = await ok(client, "POST", "/monitoring/webhooks", user, json={"url": receiver.url})
    await ok(client, "POST", f"/monitoring/webhooks/{hook['id']}/test", user)
    # The admin withdrew the allowance since (a dispatcher without it): refused
    # before any connection.
    strict = WebhookDispatcher(
        app.state.core.db,
        timeout=5,
        max_attempts=MAX_ATTEMPTS,
        retry_base=RETRY_BASE,
        allowed_networks=[],
    )
    try:
        assert await strict.run_once() == 1
    finally:
        await strict.stop()
    assert receiver.requests == []
    (one,) = await deliveries(client, user, hook["id"])
    assert one["status"] == "pending" and one["last_status_code"] is None
    assert "refused" in one["last_error"] and "loopback" in one["last_error"]


async def test_the_apps_dispatcher_delivers_a_ping(client, register, app, receiver) -> None:
    user = await register()
    hook = await ok(
        client,
        "POST",
        "/monitoring/webhooks",
        user,
        json={"url": receiver.url.replace("127.0.0.1", "localhost"), "events": ["alert.firing"]},
    )
    assert hook["events"] == ["alert.firing"]
    d = dispatcher(app)
    d.start()
    try:
        await ok(client, "POST", f"/monitoring/webhooks/{hook['id']}/test", user)
        await asyncio.wait_for(receiver.arrived.wait(), 30)
    finally:
        await d.stop()
    (got,) = receiver.requests
    assert got.headers["x-nefos-event"] == "ping"
    assert got.headers["host"].startswith("localhost:")
    check_signature(got, hook["secret"])
    # The webhook gone, so is its log.
    await ok(client, "DELETE", f"/monitoring/webhooks/{hook['id']}", user)
    r = await client.get(V1 + f"/monitoring/webhooks/{hook['id']}/deliveries", headers=user.headers)
    assert r.status_code == 404


async def test_the_checked_address_is_the_one_connected_to(
    client, register, app, receiver, monkeypatch
) -> None:
    """A name is resolved once per attempt and the connection goes to that address:
    here a name no DNS knows, which the test resolves to the receiver (allowed), and
    then to the metadata address (refused: no connection, whatever DNS says next)."""
    import ipaddress

    from nefos.monitoring import webhooks as module

    answers: list[str] = ["127.0.0.1", "127.0.0.1", "169.254.169.254"]
    real = module.resolve

    async def resolve(host: str, port: int) -> list[Any]:
        if host != "hooks.nefos.test":
            return await real(host, port)
        return [ipaddress.ip_address(answers.pop(0))]

    monkeypatch.setattr(module, "resolve", resolve)
    user = await register()
    url = receiver.url.replace("127.0.0.1", "hooks.nefos.test")
    hook = await ok(client, "POST", "/monitoring/webhooks", user, json={"url": url})
    await ok(client, "POST", f"/monitoring/webhooks/{hook['id']}/test", user)
    assert await dispatcher(app).run_once() == 1
    (got,) = receiver.requests
    assert got.headers["host"] == url.split("/")[2]  # the name, sent to the checked IP
    check_signature(got, hook["secret"])
    # The name now points at the metadata service: refused before connecting.
    await ok(client, "POST", f"/monitoring/webhooks/{hook['id']}/test", user)
    assert await dispatcher(app).run_once() == 1
    assert len(receiver.requests) == 1
    newest = (await deliveries(client, user, hook["id"]))[0]
    assert newest["status"] == "pending" and "link-local" in newest["last_error"]
