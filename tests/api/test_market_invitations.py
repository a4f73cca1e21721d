"""Invitations to private listings (seed 002: "private by invitation"): an invited
organisation sees the listing and subscribes, everyone else gets a 404; an e-mail
invitation's one-time token is accepted by the holder of the address only, for one of
its organisations; revoking takes the access away and cancels the organisation's
subscription (a paid period runs to its end); pending invitations are bounded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from nefos.db.models import ListingInvitation
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.services import market_invitations
from tests.api.test_containers import Api, assert_error
from tests.api.test_marketplace import FREE, FREEMIUM
from tests.api.test_subscriptions import lookup, org_of, plan_of, publish

V1 = "/api/v1"
NO_ID = "00000000-0000-0000-0000-000000000000"


async def titles(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> set[str]:
    r = await client.get(f"{V1}/marketplace/listings", headers=headers or {})
    assert r.status_code == 200, r.text
    return {item["title"] for item in r.json()["data"]["items"]}


async def test_an_invited_organisation_sees_a_private_listing_and_subscribes(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator_user, consumer_user, stranger_user = (
        await register(),
        await register(),
        await register(),
    )
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "secret", [FREEMIUM, FREE], visibility="private")
    lid, basic, hobby = listed["id"], plan_of(listed, "basic"), plan_of(listed, "hobby")
    consumer_org, creator_org = await org_of(consumer), await org_of(creator)
    invitations = f"/marketplace/listings/{lid}/invitations"

    # Before any invitation: a 404 to the consumer, to strangers and to no one.
    for headers in (consumer_user.headers, stranger_user.headers, {}):
        r = await client.get(f"{V1}/marketplace/listings/{lid}", headers=headers)
        assert_error(r, 404, "NOT_FOUND")
        assert listed["title"] not in await titles(client, headers)
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": hobby["id"]},
        headers=consumer_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    # An organisation invited by id is in at once: no token.
    inv = (await creator.call("POST", invitations, 201, json={"organisation_id": consumer_org}))[
        "invitation"
    ]
    assert (inv["status"], inv["organisation_id"], inv["token"], inv["email"]) == (
        "accepted",
        consumer_org,
        None,
        None,
    )
    assert inv["accepted_at"] and inv["expires_at"] > inv["created_at"]
    shown = (await consumer.call("GET", f"/marketplace/listings/{lid}"))["listing"]
    assert shown["visibility"] == "private" and len(shown["plans"]) == 2
    assert listed["title"] in await titles(client, consumer_user.headers)
    for headers in (stranger_user.headers, {}):
        r = await client.get(f"{V1}/marketplace/listings/{lid}", headers=headers)
        assert_error(r, 404, "NOT_FOUND")
        assert listed["title"] not in await titles(client, headers)
    got = await consumer.call(
        "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": basic["id"]}
    )
    sub, key = got["subscription"], got["key"]["key"]
    # Another organisation of the same user is not invited: it may not subscribe.
    other_org = (await consumer.call("POST", "/organisations", 201, json={"name": "Side"}))["id"]
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": hobby["id"], "organisation_id": other_org},
        headers=consumer_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    # What makes no sense is refused, in the envelope.
    for body, status, code in (
        ({"organisation_id": consumer_org}, 409, "CONFLICT"),  # invited already
        ({"organisation_id": creator_org}, 422, "VALIDATION_ERROR"),  # its own
        ({"organisation_id": NO_ID}, 404, "NOT_FOUND"),
        ({}, 422, "VALIDATION_ERROR"),
        ({"organisation_id": consumer_org, "email": "a@example.com"}, 422, "VALIDATION_ERROR"),
        ({"email": "not an address"}, 422, "VALIDATION_ERROR"),
        ({"email": "a@example.com", "expires_in_days": 0}, 422, "VALIDATION_ERROR"),
    ):
        r = await client.post(f"{V1}{invitations}", json=body, headers=creator_user.headers)
        assert_error(r, status, code)
    # Invitations are the seller's: anyone else (the invited included) gets a 404.
    for who in (consumer_user, stranger_user):
        r = await client.get(f"{V1}{invitations}", headers=who.headers)
        assert_error(r, 404, "NOT_FOUND")
        r = await client.post(
            f"{V1}{invitations}",
            json={"organisation_id": await org_of(Api(client, who))},
            headers=who.headers,
        )
        assert_error(r, 404, "NOT_FOUND")
        r = await client.delete(f"{V1}{invitations}/{inv['id']}", headers=who.headers)
        assert_error(r, 404, "NOT_FOUND")

    # An e-mail address not known yet: a pending invitation and a token shown once.
    newcomer_email = "newcomer-invited@example.com"
    mailed = (await creator.call("POST", invitations, 201, json={"email": newcomer_email.upper()}))[
        "invitation"
    ]
    token = mailed["token"]
    assert token.startswith("nfl_") and mailed["status"] == "pending"
    assert (mailed["email"], mailed["organisation_id"]) == (newcomer_email, None)
    r = await client.post(
        f"{V1}{invitations}", json={"email": newcomer_email}, headers=creator_user.headers
    )
    assert assert_error(r, 409, "CONFLICT")["error"]["details"]["invitation_id"] == mailed["id"]
    listed_invs = await creator.call("GET", invitations)
    assert [i["id"] for i in listed_invs["invitations"]] == [mailed["id"], inv["id"]]
    assert token not in str(listed_invs)
    # Someone else holding the token: a 404, like a wrong one.
    for who, tok in ((stranger_user, token), (consumer_user, token + "x")):
        r = await client.post(
            f"{V1}/marketplace/invitations/accept", json={"token": tok}, headers=who.headers
        )
        assert_error(r, 404, "NOT_FOUND")
    # The holder of the address registers, and accepts for its organisation.
    newcomer_user = await register(email=newcomer_email)
    newcomer = Api(client, newcomer_user)
    newcomer_org = await org_of(newcomer)
    r = await client.get(f"{V1}/marketplace/listings/{lid}", headers=newcomer_user.headers)
    assert_error(r, 404, "NOT_FOUND")
    accepted = await newcomer.call("POST", "/marketplace/invitations/accept", json={"token": token})
    assert accepted["invitation"]["status"] == "accepted"
    assert accepted["invitation"]["organisation_id"] == newcomer_org
    assert accepted["invitation"]["accepted_by"] == newcomer_user.id
    assert accepted["listing"]["id"] == lid
    assert listed["title"] in await titles(client, newcomer_user.headers)
    # Once.
    r = await client.post(
        f"{V1}/marketplace/invitations/accept",
        json={"token": token},
        headers=newcomer_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    got = await newcomer.call(
        "POST", f"/marketplace/listings/{lid}/subscribe", 201, json={"plan_id": hobby["id"]}
    )
    hobby_sub, hobby_key = got["subscription"], got["key"]["key"]

    # Revoking the consumer's invitation: it no longer sees the listing nor may it
    # subscribe again; its paid (freemium) period runs to its end, unrenewed, and its
    # key works until then.
    revoked = await creator.call("DELETE", f"{invitations}/{inv['id']}")
    assert revoked["invitation"]["status"] == "revoked" and revoked["subscriptions_cancelled"] == 1
    r = await client.get(f"{V1}/marketplace/listings/{lid}", headers=consumer_user.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": hobby["id"]},
        headers=consumer_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    assert listed["title"] not in await titles(client, consumer_user.headers)
    after = (await consumer.call("GET", f"/marketplace/subscriptions/{sub['id']}"))["subscription"]
    assert (after["status"], after["cancel_at_period_end"], after["renews_at"]) == (
        "active",
        True,
        None,
    )
    assert await lookup(app, key) is not None
    # Again: a no-op.
    again = await creator.call("DELETE", f"{invitations}/{inv['id']}")
    assert again["subscriptions_cancelled"] == 0 and again["invitation"]["status"] == "revoked"
    r = await client.delete(f"{V1}{invitations}/{NO_ID}", headers=creator_user.headers)
    assert_error(r, 404, "NOT_FOUND")
    # The newcomer's free plan ends at once when its invitation goes; its key with it.
    revoked = await creator.call("DELETE", f"{invitations}/{mailed['id']}")
    assert revoked["subscriptions_cancelled"] == 1
    gone = (await newcomer.call("GET", f"/marketplace/subscriptions/{hobby_sub['id']}"))[
        "subscription"
    ]
    assert gone["status"] == "cancelled" and gone["ended_reason"] == "cancelled"
    assert await lookup(app, hobby_key) is None
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": hobby["id"]},
        headers=newcomer_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    # Invited again, the consumer is back in; the list filters by status.
    await creator.call("POST", invitations, 201, json={"organisation_id": consumer_org})
    assert (await consumer.call("GET", f"/marketplace/listings/{lid}"))["listing"]["id"] == lid
    by_status = {
        s: [i["id"] for i in (await creator.call("GET", f"{invitations}?status={s}"))["items"]]
        for s in ("pending", "accepted", "revoked", "expired")
    }
    assert len(by_status["accepted"]) == 1 and by_status["pending"] == by_status["expired"] == []
    assert sorted(by_status["revoked"]) == sorted([inv["id"], mailed["id"]])
    r = await client.get(f"{V1}{invitations}?status=lost", headers=creator_user.headers)
    assert_error(r, 422, "VALIDATION_ERROR")

    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")


async def test_an_expired_invitation_cannot_be_accepted_and_pending_ones_are_bounded(
    client: httpx.AsyncClient,
    register: Any,
    podman_host: Any,
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creator_user = await register()
    creator = Api(client, creator_user)
    made, listed = await publish(creator, "bounded", [FREE], visibility="private")
    invitations = f"/marketplace/listings/{listed['id']}/invitations"
    late_user = await register()
    late = (await creator.call("POST", invitations, 201, json={"email": late_user.email}))[
        "invitation"
    ]
    async with app.state.core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(
            update(ListingInvitation)
            .where(ListingInvitation.id == late["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    r = await client.post(
        f"{V1}/marketplace/invitations/accept",
        json={"token": late["token"]},
        headers=late_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    expired = await creator.call("GET", f"{invitations}?status=expired")
    assert [i["id"] for i in expired["items"]] == [late["id"]]
    assert expired["items"][0]["status"] == "expired"
    # An expired invitation is no longer in the way of a new one.
    fresh = (await creator.call("POST", invitations, 201, json={"email": late_user.email}))[
        "invitation"
    ]

    monkeypatch.setattr(market_invitations, "MAX_PENDING", 2)
    await creator.call("POST", invitations, 201, json={"email": "second@example.com"})
    r = await client.post(
        f"{V1}{invitations}", json={"email": "third@example.com"}, headers=creator_user.headers
    )
    body = assert_error(r, 409, "RESOURCE_EXHAUSTED")
    assert body["error"]["details"]["limit"] == 2
    # Revoking a pending one makes room.
    await creator.call("DELETE", f"{invitations}/{fresh['id']}")
    await creator.call("POST", invitations, 201, json={"email": "third@example.com"})
    r = await client.post(
        f"{V1}/marketplace/invitations/accept",
        json={"token": fresh["token"]},
        headers=late_user.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")
