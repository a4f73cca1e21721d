"""The API gateway (seed 002): consumers call a published API through /gw/{slug}/
with their subscription's key; the plan's rate limit, quota and price and the
consumer's wallet are checked before anything is forwarded; each call is recorded
once per request id. Real HTTP to a real API on the test Podman."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import redis.asyncio as aioredis
from sqlalchemy import func, select

from nefos.billing import apicalls
from nefos.db.models import ApiCall, ApiCallWatermark, Subscription
from nefos.db.session import begin_write
from nefos.services.endpoints import host_label
from tests.api.test_apis import api_body
from tests.api.test_containers import Api, assert_error
from tests.api.test_invoices import org_of
from tests.conftest import wait_serving

PLANS = [
    {
        "name": "Basic",
        "model": "freemium",
        "included_calls": 3,
        "price_per_call": "4.00",
        "rate_limit_per_minute": 1000,
    },
    {"name": "Burst", "model": "free", "rate_limit_per_minute": 50},
]


async def subscribe(client: httpx.AsyncClient, consumer: Any, listing_id: str, plan_id: str) -> str:
    """The consumer's organisation subscribes to a plan; its first key."""
    data = await Api(client, consumer).call(
        "POST", f"/marketplace/listings/{listing_id}/subscribe", 201, json={"plan_id": plan_id}
    )
    key: str = data["key"]["key"]
    return key


async def calls_of(app: Any, **where: Any) -> list[ApiCall]:
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        query = select(ApiCall).order_by(ApiCall.created_at)
        for name, value in where.items():
            query = query.where(getattr(ApiCall, name) == value)
        return list(await session.scalars(query))


async def test_calls_are_checked_forwarded_limited_priced_and_recorded_once(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any, monkeypatch: Any
) -> None:
    creator = await register()
    api = Api(client, creator)
    made = await api.call("POST", "/apis", 202, json=api_body("weather"))
    other = await api.call("POST", "/apis", 202, json=api_body("quotes"))
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
        )  # fmt: skip
    )["listing"]
    other_listing = (
        await api.call(
            "POST",
            "/marketplace/publish",
            201,
            json={
                "api_id": other["api_id"],
                "title": "Quotes",
                "category": "finance",
                "plans": [{"name": "Free", "model": "free"}],
            },
        )  # fmt: skip
    )["listing"]
    plans = {p["key"]: p["id"] for p in listing["plans"]}
    slug = listing["slug"]

    consumer = await register()
    key = await subscribe(client, consumer, listing["id"], plans["basic"])
    gw = f"/gw/{slug}"

    # No key, a wrong key, a key of another API: refused before anything is sent.
    assert_error(await client.get(f"{gw}/index.html"), 401, "UNAUTHORIZED")
    r = await client.get(f"{gw}/index.html", headers={"X-API-Key": "nfc_" + "x" * 43})
    assert_error(r, 401, "UNAUTHORIZED")
    other_key = await subscribe(
        client, consumer, other_listing["id"], other_listing["plans"][0]["id"]
    )
    r = await client.get(f"{gw}/index.html", headers={"X-API-Key": other_key})
    assert_error(r, 403, "FORBIDDEN")
    # A consumer's Nefos session is not a key: never taken for one.
    r = await client.get(f"{gw}/index.html", headers=consumer.headers)
    assert_error(r, 401, "UNAUTHORIZED")

    # Within the free quota: forwarded, with the plan's headers and a request id.
    r = await client.get(
        f"{gw}/index.html", headers={"X-API-Key": key, "X-Request-ID": "first-call"}
    )
    assert r.status_code == 200 and r.text.strip() == "nefos test page"
    assert r.headers["x-request-id"] == "first-call"
    assert r.headers["ratelimit-limit"] == "1000" and r.headers["x-quota-limit"] == "3"
    assert r.headers["x-quota-remaining"] == "2"
    # The same request id again: a 409, forwarded nowhere, counted and priced once.
    r = await client.get(
        f"{gw}/index.html", headers={"Authorization": f"Bearer {key}", "X-Request-ID": "first-call"}
    )
    body = assert_error(r, 409, "CONFLICT")
    assert body["error"]["details"] == {"request_id": "first-call", "status": 200}
    assert (await client.get(f"{gw}/index.html", headers={"X-API-Key": key})).status_code == 200
    # The same API by Host, {slug}.{apps domain}: the gateway's too, key and all.
    host = f"{slug}.{app.state.core.settings.apps_domain}"
    assert_error(await client.get("/index.html", headers={"Host": host}), 401, "UNAUTHORIZED")
    r = await client.get("/index.html", headers={"Host": host, "X-API-Key": key})
    assert r.status_code == 200 and r.text.strip() == "nefos test page", r.text
    assert r.headers["x-quota-remaining"] == "0"
    r = await client.get("/index.html", headers={"Host": host, "X-API-Key": other_key})
    assert_error(r, 403, "FORBIDDEN")
    # Never around the gateway: the API's container is no service of its own on the
    # ingress, by path or by its host name.
    container_id = made["api"]["container_id"]
    assert_error(await client.get(f"/svc/{container_id}/index.html"), 404, "NOT_FOUND")
    shown = await api.call("GET", f"/services/{container_id}")
    label = host_label(shown["service"]["name"], container_id)
    service_host = f"{label}.{app.state.core.settings.apps_domain}"
    r = await client.get("/index.html", headers={"Host": service_host})
    assert_error(r, 404, "NOT_FOUND")
    # Nothing climbs out of the API's base path; a name that is no slug is a 404.
    for escape in ("%2e%2e/index.html", "a/..%2findex.html", "%2E/index.html"):
        r = await client.get(f"{gw}/{escape}", headers={"X-API-Key": key})
        assert_error(r, 400, "VALIDATION_ERROR")
    assert_error(await client.get("/gw/Not_A_Slug/", headers={"X-API-Key": key}), 404, "NOT_FOUND")
    recorded = await calls_of(app, api_id=made["api_id"])
    assert len(recorded) == 3 and all(c.price == 0 for c in recorded)
    assert recorded[0].request_id.endswith(":first-call") and recorded[0].status == 200

    # Beyond the quota each call costs 4.00: the wallet (10.00) pays for two, even
    # when the calls come at once.
    priced = await asyncio.gather(
        *(client.get(f"{gw}/index.html", headers={"X-API-Key": key}) for _ in range(4))
    )
    assert Counter(r.status_code for r in priced) == {200: 2, 402: 2}, [r.text for r in priced]
    assert_error(next(r for r in priced if r.status_code == 402), 402, "RESOURCE_EXHAUSTED")
    recorded = await calls_of(app, api_id=made["api_id"])
    assert sorted(c.price for c in recorded) == [0, 0, 0, 4, 4]

    # The listing counts the calls answered in 30 days; popularity sorts by them.
    shown = (await client.get(f"/api/v1/marketplace/listings/{listing['id']}")).json()["data"]
    assert shown["listing"]["calls_30d"] == 5
    popular = (await client.get("/api/v1/marketplace/listings?sort=popularity")).json()["data"]
    assert [(i["title"], i["calls_30d"]) for i in popular["items"]] == [
        ("Weather", 5),
        ("Quotes", 0),
    ]
    # Published without a description of their own, the listings say their APIs'.
    found = (await client.get("/api/v1/marketplace/listings?q=forecasts")).json()["data"]
    assert {i["title"] for i in found["items"]} == {"Weather", "Quotes"}
    newest = (await client.get("/api/v1/marketplace/listings?sort=newest")).json()["data"]
    assert [i["title"] for i in newest["items"]] == ["Quotes", "Weather"]

    # The billing pass charges the consumer for its priced calls, once, and credits
    # the creator its share (less the platform's 20 %); the creator is paid out.
    settings = app.state.core.settings
    assert await apicalls.charge_calls(app.state.core.db, settings) == (1, Decimal("8"))
    assert await apicalls.charge_calls(app.state.core.db, settings) == (0, Decimal("0"))
    consumer_api, creator_api = Api(client, consumer), Api(client, creator)
    ledger = (await consumer_api.call("GET", "/wallet/ledger"))["items"]
    assert [(e["kind"], e["amount"]) for e in ledger][0] == ("charge", "-8.00"), ledger
    assert (await consumer_api.call("GET", "/wallet"))["balance"] == "2.00"
    earned = (await creator_api.call("GET", "/wallet/ledger"))["items"]
    assert [(e["kind"], e["amount"]) for e in earned][0] == ("revenue", "6.40"), earned
    # Charged: every priced call at or before the consumer's watermark, none rewritten.
    priced = [c for c in await calls_of(app, api_id=made["api_id"]) if c.price > 0]
    async with app.state.core.db.sessionmaker() as session:
        mark = await session.scalar(
            select(ApiCallWatermark.charged_until).where(
                ApiCallWatermark.organisation_id == priced[0].organisation_id
            )
        )
    assert mark is not None and all(c.created_at <= mark for c in priced)
    monkeypatch.setattr(settings, "billing_min_payout", Decimal("5"))
    payout = await creator_api.call(
        "POST",
        "/billing/payout-request",
        201,
        json={"amount": "6.40", "destination": "DE89 3704 0044 0532 0130 00"},
        headers={"Idempotency-Key": "gw-payout-1"},
    )
    assert payout["amount"] == "6.40"

    # The free quota holds under concurrency too: of 5 calls at once on a fresh
    # subscription, 3 are free and 2 priced (its wallet pays for both).
    second = await register()
    fresh = await subscribe(client, second, listing["id"], plans["basic"])
    answers = await asyncio.gather(
        *(client.get(f"{gw}/index.html", headers={"X-API-Key": fresh}) for _ in range(5))
    )
    assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        prices = sorted(
            await session.scalars(
                select(ApiCall.price)
                .join(Subscription, Subscription.id == ApiCall.subscription_id)
                .where(Subscription.organisation_id != recorded[0].organisation_id)
                .where(ApiCall.api_id == made["api_id"])
            )
        )
    assert prices == [0, 0, 0, 4, 4], prices

    # 200 calls at once against a limit of 50 a minute: exactly 50 forwarded.
    burst = await subscribe(client, await register(), listing["id"], plans["burst"])
    answers = await asyncio.gather(
        *(client.get(f"{gw}/index.html", headers={"X-API-Key": burst}) for _ in range(200))
    )
    counts = Counter(r.status_code for r in answers)
    assert counts == {200: 50, 429: 150}, counts
    limited = next(r for r in answers if r.status_code == 429)
    assert_error(limited, 429, "RATE_LIMITED")
    assert limited.headers["ratelimit-remaining"] == "0" and int(limited.headers["retry-after"]) > 0
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        forwarded = await session.scalar(
            select(func.count())
            .select_from(ApiCall)
            .join(Subscription, Subscription.id == ApiCall.subscription_id)
            .where(Subscription.plan_id == plans["burst"])
        )
    assert forwarded == 50

    # While too many answered calls wait to be written (the database away), new calls
    # are refused before they are forwarded: none is made that could not be billed.
    monkeypatch.setattr(app.state.core.calls, "limit", 0)
    refused = await client.get(f"{gw}/index.html", headers={"X-API-Key": burst})
    assert_error(refused, 503, "SERVICE_UNAVAILABLE")
    assert refused.headers["retry-after"] == "1"
    monkeypatch.undo()
    await app.state.core.calls.flush()
    async with app.state.core.db.sessionmaker() as session:
        assert forwarded == await session.scalar(
            select(func.count())
            .select_from(ApiCall)
            .join(Subscription, Subscription.id == ApiCall.subscription_id)
            .where(Subscription.plan_id == plans["burst"])
        )

    # A revoked key stops calling (within the gateway's 5 s memory of keys).
    sub = (await Api(client, consumer).call("GET", "/marketplace/subscriptions"))["items"]
    basic_sub = next(x for x in sub if x["listing_id"] == listing["id"])
    keys = await Api(client, consumer).call("GET", f"/marketplace/subscriptions/{basic_sub['id']}")
    [key_row] = keys["subscription"]["keys"]
    await Api(client, consumer).call(
        "DELETE", f"/marketplace/subscriptions/{basic_sub['id']}/keys/{key_row['id']}"
    )
    deadline = asyncio.get_running_loop().time() + 15
    while (await client.get(f"{gw}/index.html", headers={"X-API-Key": key})).status_code != 401:
        assert asyncio.get_running_loop().time() < deadline, "a revoked key still calls"
        await asyncio.sleep(0.5)

    # Ten calls at once with one new request id: one is forwarded.
    replayer = await subscribe(client, await register(), listing["id"], plans["burst"])
    same = {"X-API-Key": replayer, "X-Request-ID": "once-only"}
    answers = await asyncio.gather(
        *(client.get(f"{gw}/index.html", headers=same) for _ in range(10))
    )
    assert Counter(r.status_code for r in answers) == {200: 1, 409: 9}
    # A call answered 500 or more was not billed: a retry with its id is forwarded,
    # on the same row.
    [once] = [c for c in await calls_of(app) if c.request_id.endswith(":once-only")]
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        await begin_write(session)  # (a read, then a write: SQLite's lock first)
        row = await session.get(ApiCall, once.id)
        assert row is not None
        row.status, row.price = 502, Decimal(0)
        await session.commit()
    r = await client.get(f"{gw}/index.html", headers=same)
    assert r.status_code == 200, r.text
    [retried] = await calls_of(app, id=once.id)
    assert retried.status == 200

    # Ending a subscription and subscribing again gives no free quota anew: the
    # period, and the calls made in it, carry over to the new subscription.
    hopper = await register()
    hop = Api(client, hopper)
    first_key = await subscribe(client, hopper, listing["id"], plans["basic"])
    for _ in range(3):
        r = await client.get(f"{gw}/index.html", headers={"X-API-Key": first_key})
        assert r.status_code == 200, r.text
    [hopped] = (await hop.call("GET", "/marketplace/subscriptions"))["items"]
    await hop.call(
        "PUT", f"/marketplace/subscriptions/{hopped['id']}", json={"plan_id": plans["burst"]}
    )
    await hop.call("DELETE", f"/marketplace/subscriptions/{hopped['id']}")
    again = await subscribe(client, hopper, listing["id"], plans["basic"])
    r = await client.get(f"{gw}/index.html", headers={"X-API-Key": again})
    assert r.status_code == 200 and r.headers["x-quota-remaining"] == "0", r.headers
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        last = await session.scalar(
            select(ApiCall).where(ApiCall.request_id.like(f"%:{r.headers['x-request-id']}"))
        )
    assert last is not None and last.price == Decimal(4)

    # The same with the counts in Redis, as every API process of an installation
    # with NEFOS_REDIS_URL shares them: 200 at once against 50, and a quota.
    redis_url = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert redis_url, "make services starts Redis (NEFOS_TEST_REDIS_URL)"
    gateway = app.state.api_gateway
    redis = aioredis.Redis.from_url(redis_url)
    monkeypatch.setattr(gateway, "shared", None)
    gateway.share(redis, f"nefos-test-{uuid.uuid4().hex}:gw:")
    try:
        burst = await subscribe(client, await register(), listing["id"], plans["burst"])
        answers = await asyncio.gather(
            *(client.get(f"{gw}/index.html", headers={"X-API-Key": burst}) for _ in range(200))
        )
        counts = Counter(r.status_code for r in answers)
        # 50 in any 60 seconds, on Redis's clock: a clock minute's turn within the
        # burst changes nothing.
        assert counts == {200: 50, 429: 150}, counts
        caller = await gateway.caller(burst)
        assert caller is not None
        held = await redis.hgetall(gateway.shared.window_key(caller.subscription_id))
        assert sum(int(n) for n in held.values()) == 50, held
        limited = next(r for r in answers if r.status_code == 429)
        assert 0 < int(limited.headers["retry-after"]) <= int(limited.headers["ratelimit-reset"])
        metered = await register()
        priced_key = await subscribe(client, metered, listing["id"], plans["basic"])
        answers = await asyncio.gather(
            *(client.get(f"{gw}/index.html", headers={"X-API-Key": priced_key}) for _ in range(6))
        )
        # 3 free, then 4.00 each: the wallet's 10.00 pays for 2 more, the last is a 402.
        assert Counter(r.status_code for r in answers) == {200: 5, 402: 1}, [
            r.text for r in answers
        ]
        await app.state.core.calls.flush()  # the gateway writes calls in groups
        async with app.state.core.db.sessionmaker() as session:
            prices = sorted(
                await session.scalars(
                    select(ApiCall.price)
                    .join(Subscription, Subscription.id == ApiCall.subscription_id)
                    .where(Subscription.organisation_id == await org_of(client, metered))
                )
            )
        assert prices == [0, 0, 0, 4, 4], prices
    finally:
        await redis.aclose()

    for m in (made, other):
        await api.wait(m["operation"])
        await api.act("DELETE", f"/apis/{m['api_id']}")
