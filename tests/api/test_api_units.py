"""Per-endpoint units (issue 17): an API declares what a call to each of its endpoints
weighs, or says it in a header of its answer; the gateway counts the plan's quota in
units and prices each unit, strips the header, and the usage, the metrics and the
invoice lines count units. Real calls through the gateway to a real API on the test
Podman, whose CGI script answers with the units it is asked for."""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import docker
import httpx
import redis.asyncio as aioredis
from sqlalchemy import select

from nefos.billing import apicalls, marketlines
from nefos.db.models import ApiCall, Subscription
from nefos.db.types import utcnow
from tests.api.test_apis import api_body
from tests.api.test_containers import Api, assert_error
from tests.api.test_gateway import subscribe
from tests.api.test_invoices import org_of
from tests.conftest import docker_host_uri, wait_serving

#: Answers with ``X-Units: <its query>``; ``?fail`` is a 503 that says 7 units.
CGI = """#!/bin/sh
q="$QUERY_STRING"
case "$q" in
  fail*) printf 'HTTP/1.1 503 Busy\\r\\nX-Units: 7\\r\\n\\r\\nbusy\\n' ;;
  *) printf 'Content-Type: text/plain\\r\\nX-Units: %s\\r\\n\\r\\nunits %s\\n' "$q" "$q" ;;
esac
"""
UNITS = [
    {"method": "GET", "path": "/index.html", "units": 2},
    {"method": "*", "path": "/cgi-bin/*", "units": 3},
]
PLANS = [
    {
        "name": "Basic",
        "model": "freemium",
        "included_calls": 5,
        "price_per_call": "1.00",
        "rate_limit_per_minute": 1000,
    },
    {"name": "Free", "model": "free", "included_calls": 5, "rate_limit_per_minute": 1000},
]


def install_cgi(container_id: str) -> None:
    """Put the units script in each of the API's replicas (busybox httpd runs
    /www/cgi-bin/* as CGI)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("cgi-bin")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        data = CGI.encode()
        script = tarfile.TarInfo("cgi-bin/units")
        script.size, script.mode = len(data), 0o755
        tar.addfile(script, io.BytesIO(data))
    client = docker.DockerClient(base_url=docker_host_uri(), version="1.41")
    try:
        engine = client.containers.list(filters={"label": f"nefos.container={container_id}"})
        assert engine, "the API's replica is not running"
        for replica in engine:
            assert replica.put_archive("/www", buf.getvalue())
    finally:
        client.close()


async def test_units_are_declared_and_validated_shown_and_changed(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    creator = await register()
    api = Api(client, creator)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"units": [{"method": "FETCH", "path": "/a", "units": 1}]}, "units"),
        ({"units": [{"method": "GET", "path": "a", "units": 1}]}, "units"),
        ({"units": [{"method": "GET", "path": "/a*b/*", "units": 1}]}, "units"),
        ({"units": [{"method": "GET", "path": "/a", "units": 0}]}, "units"),
        ({"units": [{"method": "GET", "path": "/a", "units": 1001}]}, "units"),
        ({"units": [{"method": "GET", "path": "/a", "units": "many"}]}, "units"),
        ({"units": [{"method": "GET", "path": "/a", "units": 1, "cost": 2}]}, "units"),
        ({"units": [{"method": "GET", "path": "/a", "units": 1}] * 2}, "units"),
        ({"units": [{"method": "GET", "path": f"/p{i}", "units": 1} for i in range(101)]}, "units"),
        ({"units": {"GET /a": 1}}, "units"),
        ({"units_header": "X Units"}, "units_header"),
        ({"units_header": "Content-Length"}, "units_header"),
        ({"units_header": "x" * 65}, "units_header"),
    ]
    for extra, field in bad:
        r = await client.post(
            "/api/v1/apis", json=api_body("units", **extra), headers=creator.headers
        )
        body = assert_error(r, 422, "VALIDATION_ERROR")
        assert any(field in k for k in body["error"]["details"]), (extra, body)

    made = await api.call(
        "POST", "/apis", 202, json=api_body("units", units=UNITS, units_header="X-Units")
    )
    api_id = made["api_id"]
    assert made["api"]["units"] == UNITS and made["api"]["units_header"] == "X-Units"
    shown = (await api.call("GET", f"/apis/{api_id}"))["api"]
    assert shown["units"] == UNITS and shown["units_header"] == "X-Units"

    # PUT replaces the list at once (no deployment); a bad one changes nothing.
    r = await client.put(
        f"/api/v1/apis/{api_id}",
        json={"units": [{"method": "GET", "path": "/x", "units": -1}]},
        headers=creator.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    one = [{"method": "POST", "path": "/v1/*", "units": 7}]
    changed = await api.call("PUT", f"/apis/{api_id}", json={"units": one})
    assert changed["operation"] is None and changed["api"]["units"] == one
    assert changed["api"]["units_header"] == "X-Units"  # (omitted: unchanged)
    cleared = await api.call("PUT", f"/apis/{api_id}", json={"units": [], "units_header": None})
    assert cleared["api"]["units"] == [] and cleared["api"]["units_header"] is None
    # Another tenant's API is a 404, units or not.
    stranger = await register()
    r = await client.put(f"/api/v1/apis/{api_id}", json={"units": one}, headers=stranger.headers)
    assert_error(r, 404, "NOT_FOUND")
    await api.wait(made["operation"])
    await api.act("DELETE", f"/apis/{api_id}")


async def test_calls_count_and_cost_their_units_declared_or_said_by_the_answer(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any, monkeypatch: Any
) -> None:
    start = utcnow() - timedelta(minutes=1)
    creator = await register()
    api = Api(client, creator)
    made = await api.call(
        "POST", "/apis", 202, json=api_body("metered", units=UNITS, units_header="X-Units")
    )
    await api.wait(made["operation"])
    container_id = made["api"]["container_id"]
    await wait_serving(client, creator.headers, container_id)
    install_cgi(container_id)
    listing = (
        await api.call(
            "POST",
            "/marketplace/publish",
            201,
            json={"api_id": made["api_id"], "title": "Units", "category": "tools", "plans": PLANS},
        )
    )["listing"]
    plans = {p["key"]: p["id"] for p in listing["plans"]}
    gw = f"/gw/{listing['slug']}"

    # Basic: 5 units free, then 1.00 a unit; the wallet holds 10.00.
    consumer = await register()
    org = await org_of(client, consumer)
    key = await subscribe(client, consumer, listing["id"], plans["basic"])
    me = Api(client, consumer)
    sid = (await me.call("GET", "/marketplace/subscriptions"))["items"][0]["id"]

    async def call(path: str, status: int = 200) -> httpx.Response:
        r = await client.get(f"{gw}{path}", headers={"X-API-Key": key})
        assert r.status_code == status, r.text
        # The API's word to the gateway never reaches the consumer.
        assert "x-units" not in r.headers, r.headers
        return r

    # Declared: GET /index.html weighs 2 units, each counted against the quota.
    r = await call("/index.html")
    assert r.text.strip() == "nefos test page" and r.headers["x-quota-remaining"] == "3"
    usage = (await me.call("GET", f"/marketplace/subscriptions/{sid}/usage"))["usage"]
    assert (usage["calls"], usage["units"], usage["remaining"], usage["alerts"]) == (1, 2, 3, [])
    r = await call("/index.html")
    assert r.headers["x-quota-remaining"] == "1"
    # 4 of 5 units: the usage alerts count units (two calls would be 40 %).
    usage = (await me.call("GET", f"/marketplace/subscriptions/{sid}/usage"))["usage"]
    assert (usage["units"], usage["percent_used"], usage["alerts"]) == (4, 80.0, [50, 80])
    # An answer of 500 or more is neither counted nor billed, whatever it says.
    r = await call("/cgi-bin/units?fail", 503)
    assert r.headers["x-quota-remaining"] == "0"  # (as admitted: 3 of the 1 left)
    # A bad header value (not an integer) is ignored: the declared 3 units, of which 1
    # is the quota's last free one and 2 are priced (a call straddling the quota).
    r = await call("/cgi-bin/units?abc")
    assert r.text.strip() == "units abc" and r.headers["x-quota-remaining"] == "0"
    # The answer's header says the units: 1, then 0 (nothing), then out of range
    # (ignored: 3), then 4 (more than the declared 3, charged as said).
    await call("/cgi-bin/units?1")
    await call("/cgi-bin/units?0")
    await call("/cgi-bin/units?5000")
    await call("/cgi-bin/units?4")
    # Owed 2 + 1 + 0 + 3 + 4 = 10.00: the wallet covers no more units.
    r = await call("/index.html", 402)
    body = assert_error(r, 402, "RESOURCE_EXHAUSTED")
    details = body["error"]["details"]
    assert (details["reason"], details["units"], Decimal(details["price"])) == ("wallet", 2, 2)

    rows = [
        (c.path, c.status, c.units, c.price)
        for c in await calls(app, org)
        if c.api_id == made["api_id"]
    ]
    assert rows == [
        ("/index.html", 200, 2, 0),
        ("/index.html", 200, 2, 0),
        ("/cgi-bin/units", 503, 3, 0),
        ("/cgi-bin/units", 200, 3, 2),
        ("/cgi-bin/units", 200, 1, 1),
        ("/cgi-bin/units", 200, 0, 0),
        ("/cgi-bin/units", 200, 3, 3),
        ("/cgi-bin/units", 200, 4, 4),
    ], rows
    usage = (await me.call("GET", f"/marketplace/subscriptions/{sid}/usage"))["usage"]
    assert (usage["calls"], usage["units"], usage["errors"]) == (7, 15, 1)
    assert (usage["quota"], usage["remaining"], usage["percent_used"]) == (5, 0, 300.0)
    assert (usage["amount"], usage["alerts"]) == ("10", [50, 80, 100])
    # The call log shows each call's units; the creator's figures count units next to
    # calls (answered below 500).
    logs = await api.call("GET", f"/apis/{made['api_id']}/logs?source=gateway&limit=10")
    assert [c["units"] for c in logs["items"]] == [4, 3, 0, 1, 3, 3, 2, 2]
    figures = (await api.call("GET", f"/apis/{made['api_id']}/metrics"))["calls"]
    assert (figures["calls"], figures["units"], figures["errors"]) == (8, 15, 1)
    endpoints = {(e["method"], e["path"]): (e["calls"], e["units"]) for e in figures["endpoints"]}
    assert endpoints == {("GET", "/index.html"): (2, 4), ("GET", "/cgi-bin/units"): (6, 11)}
    consumers = {c["consumer"]: (c["calls"], c["units"], c["amount"]) for c in figures["consumers"]}
    assert consumers == {org: (8, 15, "10")}
    assert sum(b["units"] for b in figures["series"]["buckets"]) == 15

    # The invoice line: the priced units times the unit price, its amount the charge.
    settings = app.state.core.settings
    assert await apicalls.charge_calls(app.state.core.db, settings) == (1, Decimal("10"))
    async with app.state.core.db.sessionmaker() as session:
        found = await marketlines.lines(
            session, [org], listing["currency"], start, utcnow() + timedelta(minutes=1)
        )
    [line] = found[org]
    assert (line.quantity, line.unit, line.unit_price, line.amount) == (
        Decimal(10),
        "unit",
        Decimal("1.00"),
        Decimal("10.00"),
    )
    assert line.description == "API calls: Units (Basic) 4 calls, 10 units"

    # The free plan refuses a call whose units go beyond its quota, and gives its
    # places back: 2 + 2 of 5 used, a call of 3 is a 429; one of 1 (no rule: a
    # page the API does not have, answered 404) still fits.
    free_user = await register()
    free_key = await subscribe(client, free_user, listing["id"], plans["free"])
    for _ in range(2):
        r = await client.get(f"{gw}/index.html", headers={"X-API-Key": free_key})
        assert r.status_code == 200, r.text
    r = await client.get(f"{gw}/cgi-bin/units?1", headers={"X-API-Key": free_key})
    body = assert_error(r, 429, "RESOURCE_EXHAUSTED")
    assert body["error"]["details"] == {
        "reason": "quota",
        "included_calls": 5,
        "used": 4,
        "units": 3,
    }
    r = await client.get(f"{gw}/missing.html", headers={"X-API-Key": free_key})
    assert r.status_code == 404 and r.headers["x-quota-remaining"] == "0"
    r = await client.get(f"{gw}/missing.html", headers={"X-API-Key": free_key})
    assert_error(r, 429, "RESOURCE_EXHAUSTED")
    free_org = await org_of(client, free_user)
    assert [(c.path, c.units, c.price) for c in await calls(app, free_org)] == [
        ("/index.html", 2, 0),
        ("/index.html", 2, 0),
        ("/missing.html", 1, 0),
    ]

    # The same with the counts in Redis: a call's units are reserved at admission and
    # moved by what its answer says.
    redis_url = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert redis_url, "make services starts Redis (NEFOS_TEST_REDIS_URL)"
    gateway = app.state.api_gateway
    redis = aioredis.Redis.from_url(redis_url)
    monkeypatch.setattr(gateway, "shared", None)
    gateway.share(redis, f"nefos-test-{uuid.uuid4().hex}:gw:")
    try:
        shared_user = await register()
        shared_key = await subscribe(client, shared_user, listing["id"], plans["basic"])
        shared_org = await org_of(client, shared_user)
        for path, status, request_id in (
            ("/index.html", 200, None),  # 2 units free
            # 3 free, 1 priced (said 4 of a declared 3), on a row claimed in flight
            # (the client's own request id) with the declared units, then settled.
            ("/cgi-bin/units?4", 200, "said-4"),
            ("/cgi-bin/units?fail", 503, None),  # given back
            ("/index.html", 200, None),  # 2 priced
        ):
            headers = {
                "X-API-Key": shared_key,
                **({"X-Request-ID": request_id} if request_id else {}),
            }
            r = await client.get(f"{gw}{path}", headers=headers)
            assert r.status_code == status and "x-units" not in r.headers, r.text
        quota_key = gateway.shared.quota_key(
            shared_org, made["api_id"], (await period_of(app, shared_org)).isoformat()
        )
        assert int(await redis.get(quota_key)) == 8
        r = await client.get(f"{gw}/index.html", headers={"X-API-Key": shared_key})
        assert r.headers["x-quota-remaining"] == "0"
        shared_rows = [c for c in await calls(app, shared_org) if c.status < 500]
        assert [(c.units, c.price) for c in shared_rows] == [(2, 0), (4, 1), (2, 2), (2, 2)]
        assert shared_rows[1].request_id.endswith(":said-4")
        assert int(await redis.get(quota_key)) == 10
    finally:
        await redis.aclose()
    await api.act("DELETE", f"/apis/{made['api_id']}")


async def calls(app: Any, org: str) -> list[ApiCall]:
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        return list(
            await session.scalars(
                select(ApiCall)
                .where(ApiCall.organisation_id == org)
                .order_by(ApiCall.created_at, ApiCall.id)
            )
        )


async def period_of(app: Any, org: str) -> Any:
    async with app.state.core.db.sessionmaker() as session:
        sub = await session.scalar(select(Subscription).where(Subscription.organisation_id == org))
        assert sub is not None
        return sub.period_start
