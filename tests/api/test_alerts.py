"""Alert rules and alerts: the engine driven with samples of explicit times, the
built-in alerts against the database's state, the API and its tenant isolation,
and webhook URLs refused before anything is connected to."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nefos.db.models import Alert, Container, Host, Operation, WebhookDelivery
from nefos.db.session import begin_write
from nefos.events import EventType
from nefos.monitoring.alerts import AlertEngine
from nefos.monitoring.types import Metric, ResourceKind, Sample
from nefos.monitoring.webhooks import UnsafeTarget, check_address, check_target, parse_networks
from tests.conftest import Account

V1 = "/api/v1"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def engine(app: Any) -> AlertEngine:
    e: AlertEngine = app.state.alert_engine
    return e


def cpu(resource_id: str, project_id: str, value: float, at: datetime) -> Sample:
    return Sample(ResourceKind.CONTAINER, resource_id, Metric.CPU_PERCENT, value, at, project_id)


async def new_container(app: Any, project_id: str, status: str = "running") -> str:
    """A container row (the engine resolves the alerts of resources that are gone)."""
    async with app.state.core.db.sessionmaker() as session:
        row = Container(
            project_id=project_id,
            name=f"c-{uuid.uuid4().hex[:8]}",
            image="localhost/none:absent",
            cpu_milli=100,
            memory_mb=8,
            status=status,
        )
        session.add(row)
        await session.commit()
        return row.id


async def ok(client: httpx.AsyncClient, method: str, path: str, who: Account, **kw: Any) -> Any:
    r = await client.request(method, V1 + path, headers=who.headers, **kw)
    assert r.is_success, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()["data"]


async def alerts_of(client: httpx.AsyncClient, who: Account, **params: Any) -> list[dict[str, Any]]:
    data = await ok(client, "GET", "/monitoring/alerts", who, params=params)
    assert data["alerts"] == data["items"]
    items: list[dict[str, Any]] = data["items"]
    return items


async def test_an_alert_message_gives_its_value_in_the_metrics_unit(client, register, app) -> None:
    user = await register()
    await ok(
        client,
        "POST",
        "/monitoring/alert-rules",
        user,
        json={
            "name": "mem big",
            "metric": "memory_bytes",
            "comparison": "gt",
            "threshold": 2 * 1024 * 1024,
            "duration_seconds": 0,
        },
    )
    c = await new_container(app, user.project_id)

    def mem(value: float, seconds: int) -> Sample:
        at = T0 + timedelta(seconds=seconds)
        return Sample(ResourceKind.CONTAINER, c, Metric.MEMORY_BYTES, value, at, user.project_id)

    await engine(app).on_samples([mem(2404350, 0)])
    (alert,) = await alerts_of(client, user, status="firing")
    assert alert["value"] == 2404350 and "(2.3 MiB)" in alert["message"]
    assert "memory_bytes > 2.0 MiB" in alert["message"] and "e+" not in alert["message"]
    # A later sample while it fires: the value and the message move together.
    await engine(app).on_samples([mem(2256896, 60)])
    (alert,) = await alerts_of(client, user, status="firing")
    assert alert["value"] == 2256896 and "(2.2 MiB)" in alert["message"]
    assert "2.3" not in alert["message"]


async def test_a_rule_goes_pending_then_firing_then_resolved(client, register, app) -> None:
    user = await register()
    rule = await ok(
        client,
        "POST",
        "/monitoring/alert-rules",
        user,
        json={
            "name": "cpu hot",
            "metric": "cpu_percent",
            "comparison": "gt",
            "threshold": 90,
            "duration_seconds": 300,
            "severity": "critical",
        },
    )
    assert rule["project_id"] == user.project_id and rule["enabled"] is True
    # A disabled webhook (its public address must never be called from a test).
    hook = await ok(
        client,
        "POST",
        "/monitoring/webhooks",
        user,
        json={"url": "http://93.184.215.14/hook", "enabled": False},
    )
    assert hook["enabled"] is False
    bus = app.state.core.events
    with bus.subscribe(lambda e: e.type == EventType.ALERT) as sub:
        e = engine(app)
        vm = await new_container(app, user.project_id)
        await e.on_samples([cpu(vm, user.project_id, 95, T0)])
        (alert,) = await alerts_of(client, user)
        assert alert["status"] == "pending" and alert["fired_at"] is None
        assert alert["rule_id"] == rule["id"] and alert["resource_id"] == vm
        assert alert["started_at"].startswith("2026-11-29T12:00:00")
        # Still holding, not yet for 300 s: pending.
        await e.on_samples([cpu(vm, user.project_id, 97, T0 + timedelta(seconds=299))])
        (alert,) = await alerts_of(client, user)
        assert alert["status"] == "pending" and alert["value"] == 97
        # 300 s after it began: firing.
        await e.on_samples([cpu(vm, user.project_id, 96, T0 + timedelta(seconds=300))])
        (alert,) = await alerts_of(client, user, status="firing")
        assert alert["fired_at"].startswith("2026-11-29T12:05:00")
        assert alert["severity"] == "critical" and "cpu_percent > 90.0 %" in alert["message"]
        assert alert["value"] == 96 and "(96.0 %)" in alert["message"]
        # Stays open (the same alert) while it holds; its message tells the value it has.
        await e.on_samples([cpu(vm, user.project_id, 99, T0 + timedelta(seconds=360))])
        (held,) = await alerts_of(client, user)
        assert held["id"] == alert["id"] and held["value"] == 99
        assert "(99.0 %)" in held["message"] and "(96.0 %)" not in held["message"]
        # It no longer holds: resolved, with the time.
        await e.on_samples([cpu(vm, user.project_id, 40, T0 + timedelta(seconds=420))])
        got = await ok(client, "GET", f"/monitoring/alerts/{alert['id']}", user)
        assert got["status"] == "resolved"
        assert got["resolved_at"].startswith("2026-11-29T12:07:00")
        events = [await sub.get() for _ in range(2)]
    assert [ev.data["status"] for ev in events] == ["firing", "resolved"]
    assert all(ev.project_id == user.project_id for ev in events)
    assert events[0].data["alert"]["id"] == alert["id"]
    # A disabled webhook gets no deliveries (test_webhooks covers those sent).
    async with app.state.core.db.sessionmaker() as session:
        kinds = sorted((await session.scalars(select(WebhookDelivery.event_type))).all())
    assert kinds == []

    # The condition again: a new alert (history is kept).
    await engine(app).on_samples([cpu(vm, user.project_id, 91, T0 + timedelta(seconds=600))])
    assert [a["status"] for a in await alerts_of(client, user)] == ["pending", "resolved"]
    # Filters.
    assert len(await alerts_of(client, user, status="open")) == 1
    assert len(await alerts_of(client, user, rule_id=rule["id"])) == 2
    assert await alerts_of(client, user, resource_id="another") == []
    assert await alerts_of(client, user, severity="info") == []
    since = (T0 + timedelta(seconds=500)).isoformat()
    assert len(await alerts_of(client, user, since=since)) == 1
    # Deleting the rule resolves its open alert and keeps the history.
    await ok(client, "DELETE", f"/monitoring/alert-rules/{rule['id']}", user)
    assert {a["status"] for a in await alerts_of(client, user)} == {"resolved"}


async def test_duration_zero_fires_at_once_and_scopes_are_kept(client, register, app) -> None:
    user = await register()
    other = await register()
    c1 = await new_container(app, user.project_id)
    c2 = await new_container(app, user.project_id)
    await ok(
        client,
        "POST",
        "/monitoring/alert-rules",
        user,
        json={
            "name": "low mem",
            "metric": "memory_percent",
            "comparison": "lte",
            "threshold": 5,
            "resource_kind": "container",
            "resource_id": c1,
        },
    )
    mem = Metric.MEMORY_PERCENT
    await engine(app).on_samples(
        [
            Sample(ResourceKind.CONTAINER, c1, mem, 5, T0, user.project_id),
            # Not covered: another resource, another kind, another metric, another project.
            Sample(ResourceKind.CONTAINER, c2, mem, 1, T0, user.project_id),
            Sample(ResourceKind.VM, c1, mem, 1, T0, user.project_id),
            Sample(ResourceKind.CONTAINER, c1, Metric.CPU_PERCENT, 1, T0, user.project_id),
            Sample(ResourceKind.CONTAINER, c1, mem, 1, T0, other.project_id),
        ]
    )
    (alert,) = await alerts_of(client, user)
    assert alert["status"] == "firing" and alert["fired_at"] == alert["started_at"]
    assert await alerts_of(client, other) == []
    # A disabled rule's open alerts are resolved.
    rule_id = alert["rule_id"]
    updated = await ok(
        client, "PUT", f"/monitoring/alert-rules/{rule_id}", user, json={"enabled": False}
    )
    assert updated["enabled"] is False
    assert (await alerts_of(client, user))[0]["status"] == "resolved"
    await engine(app).on_samples(
        [Sample(ResourceKind.CONTAINER, c1, mem, 1, T0 + timedelta(seconds=5), user.project_id)]
    )
    assert len(await alerts_of(client, user)) == 1


async def test_host_down_and_instance_crashed(client, register, admin, app) -> None:
    user = await register()
    core = app.state.core
    async with core.db.sessionmaker() as session:
        host = Host(
            hostname="down-host",
            driver="docker",
            uri="unix:///nonexistent/alerts.sock",
            hypervisor_type="docker",
            status="offline",
            cpu_cores=1,
            memory_mb=512,
            storage_gb=1,
            last_error="connection refused",
        )
        crashed = Container(
            project_id=user.project_id,
            name="crashed",
            image="x",
            cpu_milli=100,
            memory_mb=8,
            status="error",
            status_reason="exited 137",
        )
        session.add_all([host, crashed])
        await session.commit()
    await engine(app).on_samples([])
    # The host's alert is the platform's: admins only.
    (down,) = await alerts_of(client, admin, platform="true")
    assert (down["kind"], down["resource_id"], down["status"]) == ("host_down", host.id, "firing")
    assert down["project_id"] is None and "connection refused" in down["message"]
    r = await client.get(V1 + "/monitoring/alerts", headers=user.headers, params={"platform": 1})
    assert r.status_code == 403
    r = await client.get(V1 + f"/monitoring/alerts/{down['id']}", headers=user.headers)
    assert r.status_code == 404
    (crash,) = await alerts_of(client, user)
    assert (crash["kind"], crash["resource_kind"], crash["resource_id"]) == (
        "instance_crashed",
        "container",
        crashed.id,
    )
    assert crash["severity"] == "critical" and "exited 137" in crash["message"]
    # Checked again: nothing new.
    await engine(app).on_samples([])
    assert len(await alerts_of(client, user)) == 1
    # They recover: resolved.
    async with core.db.sessionmaker() as session:
        # Read then written: take the write lock first (SQLite fails a deferred
        # transaction's upgrade at once if the request log wrote in between).
        await begin_write(session)
        h = await session.get(Host, host.id)
        c = await session.get(Container, crashed.id)
        assert h is not None and c is not None
        # Not offline any more (draining: the app's periodic host check, which would
        # find this host unreachable again, leaves a draining host alone).
        h.status = "draining"
        c.status = "running"
        await session.commit()
    await engine(app).on_samples([])
    (down,) = await alerts_of(client, admin, platform="true")
    (crash,) = await alerts_of(client, user)
    assert down["status"] == crash["status"] == "resolved"
    assert down["resolved_at"] is not None and crash["resolved_at"] is not None
    async with core.db.sessionmaker() as session:
        opened = (await session.scalars(select(Alert).where(Alert.open_key.is_not(None)))).all()
    assert opened == []


async def test_a_failed_bring_up_is_no_crash_but_a_failed_stop_hides_none(
    client, register, app
) -> None:
    """An instance in error whose latest operation failed to bring it up (create,
    scale, start) raises no "Instance crashed": the operation tells that failure. One
    whose latest failed operation was anything else (a stop) still does."""
    user = await register()
    made = {}
    async with app.state.core.db.sessionmaker() as session:
        for kind in ("container.create", "container.start", "container.stop"):
            c = Container(
                project_id=user.project_id,
                name=kind.replace(".", "-"),
                image="x",
                cpu_milli=100,
                memory_mb=8,
                status="error",
                status_reason="exited 1",
            )
            session.add(c)
            await session.flush()
            session.add(
                Operation(
                    kind=kind,
                    resource_type="container",
                    resource_id=c.id,
                    project_id=user.project_id,
                    status="failed",
                )
            )
            made[kind] = c.id
        await session.commit()
    await engine(app).on_samples([])
    crashed = {a["resource_id"] for a in await alerts_of(client, user)}
    assert crashed == {made["container.stop"]}


async def test_rule_validation_and_tenant_isolation(client, register, app) -> None:
    a = await register()
    b = await register()
    bad = [
        {"name": "x", "metric": "nope", "threshold": 1},
        {"name": "x", "metric": "cpu_percent", "threshold": "NaN"},
        {"name": "x", "metric": "cpu_percent", "threshold": 1, "comparison": "eq"},
        {"name": "x", "metric": "cpu_percent", "threshold": 1, "duration_seconds": -1},
        {"name": "x", "metric": "cpu_percent", "threshold": 1, "resource_kind": "host"},
        {"name": "", "metric": "cpu_percent", "threshold": 1},
        {"name": "x", "metric": "cpu_percent", "threshold": 1, "extra": 1},
    ]
    for body in bad:
        r = await client.post(V1 + "/monitoring/alert-rules", headers=a.headers, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "VALIDATION_ERROR"
    body = {"name": "r", "metric": "cpu_percent", "threshold": 80}
    rule = await ok(client, "POST", "/monitoring/alert-rules", a, json=body)
    r = await client.post(V1 + "/monitoring/alert-rules", headers=a.headers, json=body)
    assert r.status_code == 409
    await engine(app).on_samples(
        [cpu(await new_container(app, a.project_id), a.project_id, 99, T0)]
    )
    (alert,) = await alerts_of(client, a)
    hook = await ok(
        client,
        "POST",
        "/monitoring/webhooks",
        a,
        json={"url": "https://93.184.215.14/x", "enabled": False},
    )
    assert hook["secret"].startswith("whsec_") and hook["events"] == [
        "alert.firing",
        "alert.resolved",
    ]
    listed = await ok(client, "GET", "/monitoring/webhooks", a)
    assert "secret" not in listed["items"][0] and listed["webhooks"] == listed["items"]
    assert "secret" not in await ok(client, "GET", f"/monitoring/webhooks/{hook['id']}", a)
    # B sees none of it: 404, exactly like a random id.
    for method, path in [
        ("GET", f"/monitoring/alert-rules/{rule['id']}"),
        ("PUT", f"/monitoring/alert-rules/{rule['id']}"),
        ("DELETE", f"/monitoring/alert-rules/{rule['id']}"),
        ("GET", f"/monitoring/alerts/{alert['id']}"),
        ("GET", f"/monitoring/webhooks/{hook['id']}"),
        ("DELETE", f"/monitoring/webhooks/{hook['id']}"),
        ("GET", f"/monitoring/webhooks/{hook['id']}/deliveries"),
        ("POST", f"/monitoring/webhooks/{hook['id']}/test"),
    ]:
        kw: dict[str, Any] = {"json": {}} if method == "PUT" else {}
        r = await client.request(method, V1 + path, headers=b.headers, **kw)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "NOT_FOUND"
    for path in ("/monitoring/alert-rules", "/monitoring/alerts", "/monitoring/webhooks"):
        r = await client.get(V1 + path, headers=b.headers, params={"project_id": a.project_id})
        assert r.status_code == 404, r.text
        assert (await ok(client, "GET", path, b))["items"] == []
    await ok(client, "DELETE", f"/monitoring/webhooks/{hook['id']}", a)


# --- webhook URLs: refused before any connection ------------------------------------------
REFUSED_URLS = [
    "http://127.0.0.1/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/hook",
    "http://localhost:9/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://100.64.0.1/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "ftp://93.184.215.14/hook",
    "file:///etc/passwd",
    "http://user:pw@93.184.215.14/hook",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_webhook_urls_to_internal_addresses_are_refused(client, register, url) -> None:
    user = await register()
    r = await client.post(V1 + "/monitoring/webhooks", headers=user.headers, json={"url": url})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and "Webhook URL refused" in error["message"]
    assert (await ok(client, "GET", "/monitoring/webhooks", user))["items"] == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    with pytest.raises(UnsafeTarget):
        check_address(ip, [])
    net = ipaddress.ip_network(f"{address}/{ip.max_prefixlen}")
    check_address(ip, [net])  # an admin's allowance


def test_public_addresses_pass() -> None:
    for address in ("93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"):
        check_address(ipaddress.ip_address(address), [])


async def test_a_name_is_checked_by_what_it_resolves_to() -> None:
    with pytest.raises(UnsafeTarget, match="loopback"):
        await check_target("http://localhost:8080/x", [])
    target = await check_target("http://localhost:8080/x", parse_networks(["127.0.0.0/8", "::1"]))
    assert target.ip.is_loopback and target.host == "localhost"


async def test_a_rule_alert_on_a_resource_that_is_gone_is_resolved(client, register, app) -> None:
    user = await register()
    await ok(
        client,
        "POST",
        "/monitoring/alert-rules",
        user,
        json={"name": "any", "metric": "cpu_percent", "comparison": "gte", "threshold": 0},
    )
    kept, gone = [await new_container(app, user.project_id) for _ in range(2)]
    await engine(app).on_samples(
        [cpu(kept, user.project_id, 1, T0), cpu(gone, user.project_id, 1, T0)]
    )
    assert {a["status"] for a in await alerts_of(client, user)} == {"firing"}
    async with app.state.core.db.sessionmaker() as session:
        await begin_write(session)
        row = await session.get(Container, gone)
        assert row is not None
        await session.delete(row)
        await session.commit()
    await engine(app).on_samples([])  # a pass with no samples of either
    by_resource = {a["resource_id"]: a for a in await alerts_of(client, user)}
    assert by_resource[kept]["status"] == "firing"
    assert by_resource[gone]["status"] == "resolved"
    assert "the resource is gone" in by_resource[gone]["message"]
