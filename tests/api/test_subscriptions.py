"""Marketplace subscriptions (seed 002): an organisation subscribes to a listing's
plan and gets a key (shown once); keys are rotated with an overlap, revoked at once,
capped; plans without a fee change within the period, a monthly one starts its own;
a free plan's cancellation ends it at once, a paid plan's at its period's end.
Tenants and roles are kept apart. (The money of plans: test_plan_billing.py.)"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from nefos.db.models import Subscription, SubscriptionKey
from nefos.db.types import utcnow
from nefos.services.market_subscriptions import MAX_LIVE_KEYS, live_key
from tests.api.test_apis import api_body
from tests.api.test_containers import Api, assert_error
from tests.api.test_marketplace import FREE, FREEMIUM, listing_body
from tests.conftest import join_org

V1 = "/api/v1"
MONTHLY = {
    "name": "Pro",
    "model": "monthly",
    "monthly_price": "4",
    "included_calls": 10000,
    "overage_price": "0.001",
}


async def lookup(app: Any, key: str) -> Any:
    """What the gateway would find for ``key`` now."""
    async with app.state.core.db.session() as session:
        return await live_key(session, key, utcnow())


async def org_of(api: Api) -> str:
    orgs = await api.call("GET", "/organisations")
    return str(orgs["items"][0]["id"])


async def publish(api: Api, name: str, plans: list[dict[str, Any]], **extra: Any) -> Any:
    made = await api.call("POST", "/apis", 202, json=api_body(name))
    body = listing_body(made["api_id"], plans=plans, **extra)
    listed = (await api.call("POST", "/marketplace/publish", 201, json=body))["listing"]
    return made, listed


def plan_of(listing: dict[str, Any], key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in listing["plans"] if p["key"] == key)
    return found


async def test_subscribe_get_a_key_rotate_revoke_change_plan_and_cancel(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator_user, consumer_user = await register(), await register()
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "weather", [FREEMIUM, FREE, MONTHLY])
    lid = listed["id"]
    basic, hobby, pro = (plan_of(listed, k) for k in ("basic", "hobby", "pro"))
    consumer_org = await org_of(consumer)

    got = await consumer.call(
        "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": basic["id"]}
    )
    sub, key = got["subscription"], got["key"]
    sid = sub["id"]
    assert sub["organisation_id"] == consumer_org and sub["listing_id"] == lid
    assert sub["api_slug"] == made["api"]["slug"] and sub["status"] == "active"
    assert sub["plan"] == basic and sub["cancel_at_period_end"] is False
    start, end = sub["period_start"], sub["period_end"]
    assert start < end and (start[:4], start[5:7]) != (end[:4], end[5:7])  # a month on
    assert key["key"].startswith("nfc_") and key["key"].startswith(key["prefix"])
    found = await lookup(app, key["key"])
    assert found is not None and found[1].id == sid and found[3].id == basic["id"]
    assert await lookup(app, key["key"][:-1] + "x") is None

    # Once per organisation and listing: the second is a 409 naming the first.
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": hobby["id"]},
        headers=consumer_user.headers,
    )
    assert assert_error(r, 409, "CONFLICT")["error"]["details"]["subscription_id"] == sid
    # Only a current plan of that listing.
    for plan_id in ("00000000-0000-0000-0000-000000000000",):
        r = await client.post(
            f"{V1}/marketplace/listings/{lid}/subscribe",
            json={"plan_id": plan_id},
            headers=consumer_user.headers,
        )
        assert_error(r, 422, "VALIDATION_ERROR")

    # Keys: prefixes, never the key or its hash.
    shown = (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert [k["prefix"] for k in shown["keys"]] == [key["prefix"]]
    text = str(shown)
    assert key["key"] not in text and "key_hash" not in text
    async with app.state.core.db.session() as session:
        digest = await session.scalar(select(SubscriptionKey.key_hash))
    assert digest and digest not in text
    listed_subs = await consumer.call("GET", "/marketplace/subscriptions")
    assert [s["id"] for s in listed_subs["subscriptions"]] == [sid]
    assert (await consumer.call("GET", "/marketplace/subscriptions?status=cancelled"))[
        "items"
    ] == []

    # Rotation: the old key keeps working for the overlap, then expires.
    second = (
        await consumer.call(
            "POST",
            f"/marketplace/subscriptions/{sid}/keys",
            201,
            json={"name": "ci", "rotate": True, "overlap_seconds": 600},
        )
    )["key"]
    assert second["name"] == "ci" and second["expires_at"] is None
    keys = {
        k["id"]: k
        for k in (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"][
            "keys"
        ]
    }
    assert keys[key["id"]]["expires_at"] is not None and keys[second["id"]]["expires_at"] is None
    assert await lookup(app, key["key"]) is not None  # within the overlap
    async with app.state.core.db.session() as session:
        await session.execute(
            update(SubscriptionKey)
            .where(SubscriptionKey.id == key["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    assert await lookup(app, key["key"]) is None
    assert await lookup(app, second["key"]) is not None
    # Out of range overlaps are refused.
    for body in ({"overlap_seconds": -1}, {"overlap_seconds": 7 * 86400 + 1}, {"x": 1}):
        r = await client.post(
            f"{V1}/marketplace/subscriptions/{sid}/keys", json=body, headers=consumer_user.headers
        )
        assert_error(r, 422, "VALIDATION_ERROR")

    # Revocation ends a key at once; again is a no-op.
    revoked = (
        await consumer.call("DELETE", f"/marketplace/subscriptions/{sid}/keys/{second['id']}")
    )["key"]
    assert revoked["revoked_at"] is not None and "key" not in revoked
    assert await lookup(app, second["key"]) is None
    again = await consumer.call("DELETE", f"/marketplace/subscriptions/{sid}/keys/{second['id']}")
    assert again["key"]["revoked_at"] == revoked["revoked_at"]
    r = await client.delete(
        f"{V1}/marketplace/subscriptions/{sid}/keys/00000000-0000-0000-0000-000000000000",
        headers=consumer_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    # At most MAX_LIVE_KEYS live keys (the API-key cap's 409); a rotation at once
    # (overlap 0) makes room.
    live = []
    for _ in range(MAX_LIVE_KEYS):
        live.append(
            (await consumer.call("POST", f"/marketplace/subscriptions/{sid}/keys", 201))["key"]
        )
    r = await client.post(
        f"{V1}/marketplace/subscriptions/{sid}/keys", headers=consumer_user.headers
    )
    assert assert_error(r, 409, "CONFLICT")["error"]["details"]["limit"] == MAX_LIVE_KEYS
    r = await client.post(
        f"{V1}/marketplace/subscriptions/{sid}/keys",
        json={"rotate": True},
        headers=consumer_user.headers,
    )
    assert_error(r, 409, "CONFLICT")  # an hour's overlap keeps the ten alive
    last = (
        await consumer.call(
            "POST",
            f"/marketplace/subscriptions/{sid}/keys",
            201,
            json={"rotate": True, "overlap_seconds": 0},
        )
    )["key"]
    assert all([await lookup(app, k["key"]) is None for k in live])
    assert await lookup(app, last["key"]) is not None

    # A change between plans without a fee keeps the period (and what was counted
    # in it); a change to a monthly plan starts a period of its own, paid for.
    changed = (
        await consumer.call(
            "PUT", f"/marketplace/subscriptions/{sid}", json={"plan_id": hobby["id"]}
        )
    )["subscription"]
    assert changed["plan"]["id"] == hobby["id"] and changed["next_charge"] is None
    assert (changed["period_start"], changed["period_end"]) == (start, end)
    changed = (
        await consumer.call("PUT", f"/marketplace/subscriptions/{sid}", json={"plan_id": pro["id"]})
    )["subscription"]
    assert changed["plan"]["id"] == pro["id"] and changed["period_start"] > start
    assert changed["next_charge"] == {
        "amount": "4.00",
        "currency": "USD",
        "at": changed["period_end"],
    }
    r = await client.put(
        f"{V1}/marketplace/subscriptions/{sid}",
        json={"plan_id": "00000000-0000-0000-0000-000000000000"},
        headers=consumer_user.headers,
    )
    assert_error(r, 422, "VALIDATION_ERROR")

    # Cancelling a paid plan: it runs to its period's end, then it has ended.
    cancelled = (await consumer.call("DELETE", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert cancelled["status"] == "active" and cancelled["cancel_at_period_end"] is True
    assert cancelled["ended_at"] is None and cancelled["next_charge"] is None
    assert await lookup(app, last["key"]) is not None
    async with app.state.core.db.session() as session:
        await session.execute(
            update(Subscription)
            .where(Subscription.id == sid)
            .values(period_end=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    assert await lookup(app, last["key"]) is None
    ended = (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert ended["status"] == "ended" and ended["ended_at"] is not None
    assert ended["ended_reason"] == "cancelled"
    assert [
        s["id"]
        for s in (await consumer.call("GET", "/marketplace/subscriptions?status=ended"))["items"]
    ] == [sid]
    r = await client.post(
        f"{V1}/marketplace/subscriptions/{sid}/keys", headers=consumer_user.headers
    )
    assert_error(r, 409, "CONFLICT")

    # Subscribing again is allowed once it has ended; a free plan's cancellation
    # ends it at once, and its keys with it.
    again_sub = await consumer.call(
        "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": hobby["id"]}
    )
    new_sid, free_key = again_sub["subscription"]["id"], again_sub["key"]["key"]
    assert new_sid != sid and await lookup(app, free_key) is not None
    done = (await consumer.call("DELETE", f"/marketplace/subscriptions/{new_sid}"))["subscription"]
    assert done["status"] == "cancelled" and done["ended_at"] is not None
    assert await lookup(app, free_key) is None
    r = await client.delete(
        f"{V1}/marketplace/subscriptions/{new_sid}", headers=consumer_user.headers
    )
    assert_error(r, 409, "CONFLICT")
    statuses = await consumer.call("GET", "/marketplace/subscriptions")
    assert {s["id"]: s["status"] for s in statuses["items"]} == {
        sid: "ended",
        new_sid: "cancelled",
    }

    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")


async def test_billing_subscription_lists_consumers_and_creators_sides(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    creator_user, consumer_user = await register(), await register()
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "quotes", [FREEMIUM, FREE])
    before = await consumer.call("GET", "/billing/subscription")
    assert before["plan"] == "pay-as-you-go" and before["marketplace"] == {
        "subscriptions": [],
        "plans_sold": [],
    }
    got = await consumer.call(
        "POST",
        f"/marketplace/listings/{listed['id']}/subscribe",
        201,
        json={"plan_id": plan_of(listed, "basic")["id"]},
    )
    mine = (await consumer.call("GET", "/billing/subscription"))["marketplace"]
    assert [s["id"] for s in mine["subscriptions"]] == [got["subscription"]["id"]]
    assert mine["subscriptions"][0]["plan"]["model"] == "freemium"
    sold = (await creator.call("GET", "/billing/subscription"))["marketplace"]
    assert sold["subscriptions"] == []
    (entry,) = sold["plans_sold"]
    assert (entry["listing_id"], entry["title"], entry["subscribers"]) == (
        listed["id"],
        "Weather Now",
        1,
    )
    assert {p["key"] for p in entry["plans"]} == {"basic", "hobby"}
    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")


async def test_subscriptions_are_their_organisations_alone(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    creator_user, consumer_user, stranger_user = (
        await register(),
        await register(),
        await register(),
    )
    viewer_user = await register()
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "maps", [FREE])
    lid, plan_id = listed["id"], listed["plans"][0]["id"]
    consumer_org = await org_of(consumer)
    await join_org(client, consumer_org, consumer_user.headers, viewer_user, "viewer", V1)

    # A creator may subscribe to its own listing (to test it).
    own = await creator.call(
        "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": plan_id}
    )
    assert own["subscription"]["organisation_id"] == await org_of(creator)
    got = await consumer.call(
        "POST",
        f"/marketplace/listings/{lid}/subscribe",
        201,
        json={"plan_id": plan_id, "organisation_id": consumer_org},
    )
    sid, key_id = got["subscription"]["id"], got["key"]["id"]

    # Another tenant: 404 on every route, as for a missing subscription.
    calls: list[tuple[str, str, Any]] = [
        ("GET", f"/marketplace/subscriptions/{sid}", None),
        ("PUT", f"/marketplace/subscriptions/{sid}", {"plan_id": plan_id}),
        ("DELETE", f"/marketplace/subscriptions/{sid}", None),
        ("POST", f"/marketplace/subscriptions/{sid}/keys", {}),
        ("DELETE", f"/marketplace/subscriptions/{sid}/keys/{key_id}", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, V1 + path, json=body, headers=stranger_user.headers)
        assert_error(r, 404, "NOT_FOUND")
    assert (await Api(client, stranger_user).call("GET", "/marketplace/subscriptions"))[
        "items"
    ] == []
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_id, "organisation_id": consumer_org},
        headers=stranger_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    # A viewer of the organisation reads, and may change nothing (403).
    viewer = Api(client, viewer_user)
    listed_by_viewer = await viewer.call(
        "GET", "/marketplace/subscriptions", params={"organisation_id": consumer_org}
    )
    assert [s["id"] for s in listed_by_viewer["items"]] == [sid]
    assert (await viewer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]["keys"]
    for method, path, body in calls[1:]:
        r = await client.request(method, V1 + path, json=body, headers=viewer_user.headers)
        assert_error(r, 403, "FORBIDDEN")
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_id, "organisation_id": consumer_org},
        headers=viewer_user.headers,
    )
    assert_error(r, 403, "FORBIDDEN")

    # Unpublished or private listings cannot be subscribed to by strangers (404);
    # nor can a listing whose API was deleted.
    await creator.call("PUT", f"/marketplace/listings/{lid}", json={"status": "unpublished"})
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_id},
        headers=stranger_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    await creator.call(
        "PUT",
        f"/marketplace/listings/{lid}",
        json={"status": "published", "visibility": "private"},
    )
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_id},
        headers=stranger_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    await creator.call("PUT", f"/marketplace/listings/{lid}", json={"visibility": "public"})
    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_id},
        headers=stranger_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(f"{V1}/marketplace/listings/{lid}/subscribe", json={"plan_id": plan_id})
    assert r.status_code == 401


async def test_concurrent_subscriptions_of_one_organisation_make_one(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    creator_user, consumer_user = await register(), await register()
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "tides", [FREE])
    path = f"{V1}/marketplace/listings/{listed['id']}/subscribe"
    body = {"plan_id": listed["plans"][0]["id"]}
    answers = await asyncio.gather(
        *(client.post(path, json=body, headers=consumer_user.headers) for _ in range(4))
    )
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409], [r.text for r in answers]
    for r in answers:
        if r.status_code == 409:
            assert_error(r, 409, "CONFLICT")
    assert len((await consumer.call("GET", "/marketplace/subscriptions"))["items"]) == 1
    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")
