"""What creators and consumers see of the calls through the gateway (seed 002): the
creator's call log in GET /apis/{id}/logs (filtered, paged, followed) and its figures
in GET /apis/{id}/metrics; the consumer's usage of its period; and the usage_alert
told once at 50, 80 and 100 % of a quota, to the WebSocket and to webhooks. Real
calls to a real API on the test Podman."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from nefos.api.app import create_app
from nefos.billing import quota
from nefos.config import Settings
from nefos.db.models import ApiCall, UsageAlert, WebhookDelivery
from nefos.db.types import utcnow
from nefos.services.subscriptions import EventView
from tests.api.conftest import Follow
from tests.api.test_apis import api_body
from tests.api.test_containers import Api, assert_error, engine_containers
from tests.api.test_gateway import subscribe
from tests.conftest import DatabaseFactory, make_settings, wait_serving

V1 = "/api/v1"
PLANS = [
    {"name": "Small", "model": "free", "included_calls": 10, "rate_limit_per_minute": 1000},
    {
        "name": "Metered",
        "model": "pay_per_use",
        "price_per_call": "0.5",
        "rate_limit_per_minute": 1000,
    },
]


@pytest.fixture(scope="module")
def usage_settings(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return make_settings(
        databases.new_url(),
        Path(tmp_path_factory.mktemp("api-usage")),
        webhook_allowed_networks=["127.0.0.0/8"],
    )


@pytest.fixture(scope="module")
async def app(usage_settings: Settings) -> AsyncIterator[Any]:
    """An app of this module's own: webhooks to loopback allowed (the consumer's hook),
    its dispatcher stopped (the deliveries stay rows to read)."""
    application = create_app(usage_settings)
    async with application.router.lifespan_context(application):
        await application.state.webhooks.stop()
        yield application


async def calls_of(app: Any, subscription_id: str) -> list[ApiCall]:
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        rows = await session.scalars(
            select(ApiCall).where(ApiCall.subscription_id == subscription_id)
        )
        return list(rows)


@pytest.fixture
async def published(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> AsyncIterator[dict[str, Any]]:
    """A creator's API, serving, on the marketplace with a small free quota and a
    metered plan."""
    creator = await register()
    api = Api(client, creator)
    made = await api.call("POST", "/apis", 202, json=api_body("weather"))
    await api.wait(made["operation"])
    await wait_serving(client, creator.headers, made["api"]["container_id"])
    listing = (
        await api.call(
            "POST",
            "/marketplace/publish",
            201,
            json={
                "api_id": made["api_id"],
                "title": "Weather",
                "category": "weather",
                "plans": PLANS,
            },
        )
    )["listing"]
    yield {
        "creator": creator,
        "api": api,
        "api_id": made["api_id"],
        "listing": listing,
        "plans": {p["key"]: p["id"] for p in listing["plans"]},
        "gw": f"/gw/{listing['slug']}",
    }
    await api.act("DELETE", f"/apis/{made['api_id']}")


async def org_of(client: httpx.AsyncClient, who: Any) -> str:
    orgs = await Api(client, who).call("GET", "/organisations")
    return str(orgs["items"][0]["id"])


async def test_the_creator_sees_the_call_log_and_figures_and_the_consumer_its_usage(
    client: httpx.AsyncClient, register: Any, app: Any, published: dict[str, Any]
) -> None:
    gw, api_id, creator = published["gw"], published["api_id"], published["api"]
    small, metered = await register(), await register()
    small_org, metered_org = await org_of(client, small), await org_of(client, metered)
    small_key = await subscribe(
        client, small, published["listing"]["id"], published["plans"]["small"]
    )
    metered_key = await subscribe(
        client, metered, published["listing"]["id"], published["plans"]["metered"]
    )

    # Calls: three served, one missing page (404) by the small plan's consumer; two
    # served and one method the API does not implement (5xx) by the metered one.
    for n in range(3):
        r = await client.get(
            f"{gw}/index.html", headers={"X-API-Key": small_key, "X-Request-ID": f"small-{n}"}
        )
        assert r.status_code == 200, r.text
    r = await client.get(f"{gw}/missing.html?x=1", headers={"X-API-Key": small_key})
    assert r.status_code == 404
    for _ in range(2):
        r = await client.get(f"{gw}/index.html", headers={"X-API-Key": metered_key})
        assert r.status_code == 200, r.text
    r = await client.request("PATCH", f"{gw}/index.html", headers={"X-API-Key": metered_key})
    assert r.status_code >= 500, (r.status_code, r.text)
    failed_status = r.status_code

    # The creator's call log: newest first, with consumer, status, latency, request id.
    logs = await creator.call("GET", f"/apis/{api_id}/logs", params={"source": "gateway"})
    assert logs["source"] == "gateway" and logs["logs"] == "" and logs["replicas"] == []
    calls = logs["items"]
    assert logs["calls"] == calls and logs["pagination"]["total"] == 7
    assert [c["status"] for c in calls] == [failed_status, 200, 200, 404, 200, 200, 200]
    assert [c["consumer"] for c in calls] == [metered_org] * 3 + [small_org] * 4
    assert [c["request_id"] for c in calls[4:]] == ["small-2", "small-1", "small-0"]
    assert calls[0]["method"] == "PATCH" and calls[3]["path"] == "/missing.html"
    assert all(c["latency_ms"] > 0 for c in calls)
    assert calls[1]["bytes_out"] > 0 and calls[1]["price"] == "0.5" and calls[0]["price"] == "0"
    # The request id is the one the call's answer carried.
    r = await client.get(f"{gw}/index.html", headers={"X-API-Key": small_key})
    newest = await creator.call(
        "GET", f"/apis/{api_id}/logs", params={"source": "gateway", "limit": 1}
    )
    assert newest["items"][0]["request_id"] == r.headers["x-request-id"]
    assert len(r.headers["x-request-id"]) == 32  # whole, not cut to fit the column

    # Filters: status (a code or a class), consumer, level, a window; keyset pages.
    async def ids(**params: Any) -> list[str]:
        data = await creator.call(
            "GET", f"/apis/{api_id}/logs", params={"source": "gateway", **params}
        )
        return [c["request_id"] for c in data["items"]]

    every = await ids(limit=100)
    assert len(every) == 8
    by_status = await creator.call(
        "GET", f"/apis/{api_id}/logs", params={"source": "gateway", "status": "404"}
    )
    assert [c["path"] for c in by_status["items"]] == ["/missing.html"]
    assert len(await ids(status="5xx")) == 1 and len(await ids(status="2xx")) == 6
    assert len(await ids(level="warning")) == 2 and len(await ids(level="error")) == 1
    assert len(await ids(consumer=metered_org)) == 3 and len(await ids(consumer=small_org)) == 5
    assert await ids(consumer="00000000-0000-0000-0000-000000000000") == []
    assert await ids(since="2999-01-01T00:00:00Z") == []
    assert len(await ids(until="2999-01-01T00:00:00Z", limit=100)) == 8
    first = await creator.call(
        "GET", f"/apis/{api_id}/logs", params={"source": "gateway", "limit": 3}
    )
    cursor = first["pagination"]["next_cursor"]
    second = await creator.call(
        "GET", f"/apis/{api_id}/logs", params={"source": "gateway", "limit": 3, "cursor": cursor}
    )
    paged = [c["request_id"] for c in first["items"] + second["items"]]
    assert paged == every[:6]
    for bad in ({"status": "600"}, {"status": "x"}, {"level": "loud"}, {"source": "db"}):
        r = await client.get(
            f"{V1}/apis/{api_id}/logs", params=bad, headers=published["creator"].headers
        )
        assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.get(
        f"{V1}/apis/{api_id}/logs",
        params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        headers=published["creator"].headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.get(
        f"{V1}/apis/{api_id}/logs",
        params={"source": "container", "follow": "true", "until": "2030-01-01T00:00:00Z"},
        headers=published["creator"].headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")  # a followed log has no end

    # The replicas' output, and both at once.
    both = await creator.call("GET", f"/apis/{api_id}/logs")
    assert both["source"] == "all" and len(both["replicas"]) == 1 and len(both["items"]) == 8
    output = await creator.call("GET", f"/apis/{api_id}/logs", params={"source": "container"})
    assert output["items"] == [] and output["pagination"] is None and output["replicas"]

    # Following: a call made while the log is followed arrives on the stream.
    follow = Follow(
        app,
        f"{V1}/apis/{api_id}/logs",
        f"source=gateway&follow=true&seconds=120&consumer={small_org}",
        published["creator"].headers,
    )
    await asyncio.wait_for(follow.started.wait(), 30)
    assert follow.status == 200
    r = await client.get(
        f"{gw}/index.html", headers={"X-API-Key": small_key, "X-Request-ID": "followed"}
    )
    assert r.status_code == 200
    await asyncio.wait_for(follow.arrived.wait(), 60)  # a deadline, not a measure
    await follow.close()
    assert [(c["request_id"], c["consumer"], c["status"]) for c in follow.lines] == [
        ("followed", small_org, 200)
    ]

    # The replicas' output followed: a line a replica writes arrives, with its time.
    follow = Follow(
        app,
        f"{V1}/apis/{api_id}/logs",
        "source=container&follow=true&seconds=120",
        published["creator"].headers,
    )
    await asyncio.wait_for(follow.started.wait(), 30)
    assert follow.status == 200
    api_row = await creator.call("GET", f"/apis/{api_id}")
    (engine,) = engine_containers(api_row["api"]["container_id"])
    said = await asyncio.to_thread(
        engine.exec_run, ["sh", "-c", "echo nefos-followed-line > /proc/1/fd/1"]
    )
    assert said.exit_code == 0, said.output

    async def written_line() -> None:  # (the health checks' request lines come too)
        while True:
            follow.arrived.clear()
            if any(x["line"] == "nefos-followed-line" for x in follow.lines):
                return
            await follow.arrived.wait()

    await asyncio.wait_for(written_line(), 60)  # a deadline, not a measure
    await follow.close()
    [line] = [x for x in follow.lines if x["line"] == "nefos-followed-line"]
    assert all(x["replica"] == 0 and x["time"] for x in follow.lines)
    assert line["replica"] == 0 and line["time"].startswith(str(utcnow().year))
    # By time: the line is within since/until around it, not before it; with its time.
    written = datetime.fromisoformat(line["time"][:19] + "+00:00")
    around = {"source": "container", "timestamps": "true"}
    within = await creator.call(
        "GET",
        f"/apis/{api_id}/logs",
        params={
            **around,
            "since": (written - timedelta(seconds=2)).isoformat(),
            "until": (written + timedelta(seconds=2)).isoformat(),
        },
    )
    [stamped] = [x for x in within["logs"].splitlines() if x.endswith("nefos-followed-line")]
    assert stamped.startswith("[replica 0] " + line["time"][:19])
    before = await creator.call(
        "GET",
        f"/apis/{api_id}/logs",
        params={**around, "until": (written - timedelta(seconds=2)).isoformat()},
    )
    assert "nefos-followed-line" not in before["logs"]

    # Figures over the last hour: the calls and errors made, by endpoint and consumer.
    metrics = await creator.call("GET", f"/apis/{api_id}/metrics", params={"period": "1h"})
    figures = metrics["calls"]
    assert (figures["calls"], figures["errors"], figures["client_errors"]) == (9, 1, 1)
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        sent = await session.scalar(
            select(func.sum(ApiCall.bytes_out)).where(ApiCall.api_id == api_id)
        )
    assert figures["bytes_out"] == sent and sent > 0
    latency = figures["latency_ms"]
    assert latency["p50"] is not None and latency["p50"] <= latency["p95"] <= latency["p99"]
    endpoints = {(e["method"], e["path"]): e["calls"] for e in figures["endpoints"]}
    assert endpoints == {
        ("GET", "/index.html"): 7,
        ("GET", "/missing.html"): 1,
        ("PATCH", "/index.html"): 1,
    }
    consumers = {c["consumer"]: (c["calls"], c["amount"]) for c in figures["consumers"]}
    assert consumers == {small_org: (6, "0"), metered_org: (3, "1")}
    assert sum(b["calls"] for b in figures["series"]["buckets"]) == 9
    assert sum(b["errors"] for b in figures["series"]["buckets"]) == 1
    assert figures["series"]["step_seconds"] == 60 and "metrics" in metrics  # replicas' cpu

    # A consumer, or anyone else, reads none of it: 404, as for a missing API.
    for who in (small, metered):
        for path in (f"/apis/{api_id}/logs", f"/apis/{api_id}/metrics"):
            assert_error(await client.get(V1 + path, headers=who.headers), 404, "NOT_FOUND")

    # The consumers' usage of their period.
    subs = (await Api(client, small).call("GET", "/marketplace/subscriptions"))["items"]
    small_sub = subs[0]["id"]
    usage = (await Api(client, small).call("GET", f"/marketplace/subscriptions/{small_sub}/usage"))[
        "usage"
    ]
    assert (usage["calls"], usage["errors"], usage["quota"], usage["remaining"]) == (6, 0, 10, 4)
    assert usage["percent_used"] == 60.0 and usage["amount"] == "0" and usage["alerts"] == [50]
    metered_sub = (await Api(client, metered).call("GET", "/marketplace/subscriptions"))["items"][
        0
    ]["id"]
    usage = (
        await Api(client, metered).call("GET", f"/marketplace/subscriptions/{metered_sub}/usage")
    )["usage"]
    assert (usage["calls"], usage["errors"], usage["quota"], usage["remaining"]) == (
        2,
        1,
        None,
        None,
    )
    assert (usage["amount"], usage["charged"], usage["pending"], usage["currency"]) == (
        "1",
        "0",
        "1",
        "USD",
    )
    for who, sid in ((metered, small_sub), (small, metered_sub), (published["creator"], small_sub)):
        r = await client.get(f"{V1}/marketplace/subscriptions/{sid}/usage", headers=who.headers)
        assert_error(r, 404, "NOT_FOUND")


async def test_usage_alerts_are_told_once_at_50_80_and_100_percent(
    client: httpx.AsyncClient, register: Any, app: Any, published: dict[str, Any]
) -> None:
    gw = published["gw"]
    consumer, stranger = await register(), await register()
    org = await org_of(client, consumer)
    me = Api(client, consumer)
    hook = await me.call(
        "POST",
        "/monitoring/webhooks",
        201,
        json={"url": "http://127.0.0.1:9/usage", "events": ["usage_alert"]},
    )
    other_hook = await me.call(
        "POST", "/monitoring/webhooks", 201, json={"url": "http://127.0.0.1:9/alerts"}
    )
    assert other_hook["events"] == ["alert.firing", "alert.resolved"]
    key = await subscribe(client, consumer, published["listing"]["id"], published["plans"]["small"])
    sid = (await me.call("GET", "/marketplace/subscriptions"))["items"][0]["id"]

    # (Events come in the order they are told: one subscription to them all.)
    told = app.state.core.events.subscribe(lambda e: e.type == "usage_alert")
    # Four calls: under half the quota of 10, nothing told.
    for _ in range(4):
        assert (await client.get(f"{gw}/index.html", headers={"X-API-Key": key})).status_code == 200
    # Eight at once (and checks racing them): 50, 80 and 100 % are crossed, each
    # told once; the two beyond the quota are refused.
    answers, *_ = await asyncio.gather(
        asyncio.gather(
            *(client.get(f"{gw}/index.html", headers={"X-API-Key": key}) for _ in range(8))
        ),
        *(quota.check(app.state.core.db, sid) for _ in range(4)),
    )
    assert Counter(r.status_code for r in answers) == {200: 6, 429: 2}
    events = [await asyncio.wait_for(told.get(), 30) for _ in range(3)]
    # More calls, checks and the billing pass's sweep tell nothing more.
    assert (await client.get(f"{gw}/index.html", headers={"X-API-Key": key})).status_code == 429
    assert await quota.check(app.state.core.db, sid) == ([50, 80, 100], [])
    assert await quota.sweep(app.state.core.db, utcnow()) == 0

    assert sorted(e.data["threshold"] for e in events) == [50, 80, 100]
    assert all(e.organisation_id == org and e.data["subscription_id"] == sid for e in events)
    assert all(
        e.data["quota"] == 10 and e.data["api_slug"] == published["listing"]["slug"] for e in events
    )
    # The consumer's members see the events; another tenant does not.
    for who, sees in ((consumer, True), (stranger, False)):
        view = EventView(app.state.core, who.access_token)
        await view.refresh()
        assert view.sees(events[0]) is sees
    async with app.state.core.db.sessionmaker() as session:
        rows = (
            await session.scalars(select(UsageAlert).where(UsageAlert.subscription_id == sid))
        ).all()
        deliveries = (
            await session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.event_type == "usage_alert")
            )
        ).all()
    assert sorted(r.threshold for r in rows) == [50, 80, 100]
    assert {d.webhook_id for d in deliveries} == {hook["id"]}
    assert sorted(d.payload["data"]["usage_alert"]["threshold"] for d in deliveries) == [
        50,
        80,
        100,
    ]
    usage = (await me.call("GET", f"/marketplace/subscriptions/{sid}/usage"))["usage"]
    assert (usage["calls"], usage["remaining"], usage["alerts"]) == (10, 0, [50, 80, 100])

    # Calls no gateway process counted (another process's, written straight to the
    # table here): the billing pass's sweep tells the crossing, once.
    second = await register()
    await subscribe(client, second, published["listing"]["id"], published["plans"]["small"])
    second_sid = (await Api(client, second).call("GET", "/marketplace/subscriptions"))["items"][0][
        "id"
    ]
    second_org = await org_of(client, second)
    async with app.state.core.db.sessionmaker() as session:
        for n in range(5):
            session.add(
                ApiCall(
                    request_id=f"{second_sid}:elsewhere-{n}",
                    api_id=published["api_id"],
                    subscription_id=second_sid,
                    plan_id=published["plans"]["small"],
                    organisation_id=second_org,
                    method="GET",
                    path="/index.html",
                    status=200,
                    latency_ms=1.0,
                )
            )
        await session.commit()
    assert await quota.sweep(app.state.core.db, utcnow()) == 1
    assert await quota.sweep(app.state.core.db, utcnow()) == 0
    # The next event told is this one: the first subscription's were three.
    event = await asyncio.wait_for(told.get(), 30)
    told.close()
    assert (event.data["subscription_id"], event.data["threshold"]) == (second_sid, 50)


def test_thresholds_crossed() -> None:
    assert quota.crossed(4, 10) == [] and quota.crossed(5, 10) == [50]
    assert quota.crossed(8, 10) == [50, 80] and quota.crossed(12, 10) == [50, 80, 100]
    assert quota.crossed(100, None) == [] and quota.crossed(3, 0) == []
    assert quota.crossed(1, 1) == [50, 80, 100]
