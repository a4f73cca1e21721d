"""Marketplace reviews (seed 002): only a consumer organisation that has called the
API successfully through the gateway reviews it, once (posting again edits), never
its creator; the creator replies once; the listing shows the rating and sorts by
it; a private listing's reviews are its organisation's only. Real calls through the
gateway to real APIs on the test Podman."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from nefos.db.models import ApiCall, ListingReview
from nefos.schemas.marketplace import MAX_REVIEW_TEXT
from tests.api.test_apis import api_body
from tests.api.test_containers import Api, assert_error
from tests.conftest import Account, wait_serving

V1 = "/api/v1"
FREE = [{"name": "Free", "model": "free", "rate_limit_per_minute": 1000}]


async def publish(api: Api, made: dict[str, Any], title: str) -> dict[str, Any]:
    body = {"api_id": made["api_id"], "title": title, "category": "tools", "plans": FREE}
    listing: dict[str, Any] = (await api.call("POST", "/marketplace/publish", 201, json=body))[
        "listing"
    ]
    return listing


async def subscribe(client: httpx.AsyncClient, who: Account, listing: dict[str, Any]) -> str:
    data = await Api(client, who).call(
        "POST",
        f"/marketplace/listings/{listing['id']}/subscribe",
        201,
        json={"plan_id": listing["plans"][0]["id"]},
    )
    key: str = data["key"]["key"]
    return key


async def call(client: httpx.AsyncClient, listing: dict[str, Any], key: str, path: str) -> int:
    r = await client.get(f"/gw/{listing['slug']}/{path}", headers={"X-API-Key": key})
    return r.status_code


async def review(
    client: httpx.AsyncClient, who: Account, listing_id: str, stars: Any, text: str = "Fine"
) -> httpx.Response:
    return await client.post(
        f"{V1}/marketplace/reviews",
        json={"listing_id": listing_id, "stars": stars, "text": text},
        headers=who.headers,
    )


async def reviews(
    client: httpx.AsyncClient, listing_id: str, who: Account | None = None, **params: Any
) -> httpx.Response:
    return await client.get(
        f"{V1}/marketplace/reviews",
        params={"listing_id": listing_id, **params},
        headers=who.headers if who else {},
    )


async def rating(client: httpx.AsyncClient, listing_id: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/marketplace/listings/{listing_id}")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()["data"]["listing"]["rating"]
    return found


def histogram(**counts: int) -> dict[str, int]:
    return {str(n): counts.get(f"s{n}", 0) for n in range(1, 6)}


async def test_consumers_who_called_review_once_creators_reply_once_and_ratings_sort(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator = await register()
    seller = Api(client, creator)
    weather = await seller.call("POST", "/apis", 202, json=api_body("weather"))
    quotes = await seller.call("POST", "/apis", 202, json=api_body("quotes"))
    maps = await seller.call("POST", "/apis", 202, json=api_body("maps"))
    for made in (weather, quotes):
        await seller.wait(made["operation"])
        await wait_serving(client, creator.headers, made["api"]["container_id"])
    w_listing = await publish(seller, weather, "Weather")
    q_listing = await publish(seller, quotes, "Quotes")
    m_listing = await publish(seller, maps, "Maps")
    wid = w_listing["id"]
    assert w_listing["rating"] == {"average": None, "count": 0, "histogram": histogram()}

    alice, bob, carol = await register(), await register(), await register()
    # Subscribed, with no call yet: refused, saying why.
    alice_key = await subscribe(client, alice, w_listing)
    refused = assert_error(await review(client, alice, wid, 4), 403, "FORBIDDEN")
    assert "used this API" in refused["error"]["message"]
    # A call the API answered with a 404 is not a successful one.
    assert await call(client, w_listing, alice_key, "no-such-page") == 404
    assert_error(await review(client, alice, wid, 4), 403, "FORBIDDEN")
    assert await call(client, w_listing, alice_key, "index.html") == 200
    r = await review(client, alice, wid, 4, "Good forecasts")
    assert r.status_code == 201, r.text
    first = r.json()["data"]["review"]
    assert (first["stars"], first["text"], first["mine"], first["reply"]) == (
        4,
        "Good forecasts",
        True,
        None,
    )
    assert first["listing_id"] == wid and "organisation_id" not in first

    # Once per organisation: posting again edits it (200), and so does PUT.
    r = await review(client, alice, wid, 5, "Great forecasts")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["review"]["id"] == first["id"]
    edited = await Api(client, alice).call(
        "PUT", f"/marketplace/reviews/{first['id']}", json={"text": "Great, and fast"}
    )
    assert (edited["review"]["stars"], edited["review"]["text"]) == (5, "Great, and fast")

    # Bad input is a 422 in the envelope.
    for stars in (0, 6, "five", 2.5, None):
        assert_error(await review(client, alice, wid, stars), 422, "VALIDATION_ERROR")
    for text in ("", "   ", "x" * (MAX_REVIEW_TEXT + 1)):
        assert_error(await review(client, alice, wid, 3, text), 422, "VALIDATION_ERROR")
    r = await client.put(f"{V1}/marketplace/reviews/{first['id']}", json={}, headers=alice.headers)
    assert_error(r, 422, "VALIDATION_ERROR")
    r = await reviews(client, wid, stars=9)
    assert_error(r, 422, "VALIDATION_ERROR")
    # An unknown listing is a 404.
    missing = "00000000-0000-0000-0000-000000000000"
    assert_error(await review(client, alice, missing, 3), 404, "NOT_FOUND")
    assert_error(await reviews(client, missing), 404, "NOT_FOUND")

    # The creator never reviews its own API, even having subscribed and called it.
    own_key = await subscribe(client, creator, w_listing)
    assert await call(client, w_listing, own_key, "index.html") == 200
    refused = assert_error(await review(client, creator, wid, 5), 403, "FORBIDDEN")
    assert "creator" in refused["error"]["message"]

    # Bob (2 stars) on Weather, Carol (4 stars) on Quotes. Two posts of Carol's at
    # once leave one review.
    bob_key = await subscribe(client, bob, w_listing)
    assert await call(client, w_listing, bob_key, "index.html") == 200
    assert (await review(client, bob, wid, 2, "Often late")).status_code == 201
    carol_key = await subscribe(client, carol, q_listing)
    assert await call(client, q_listing, carol_key, "index.html") == 200
    both = await asyncio.gather(
        review(client, carol, q_listing["id"], 3), review(client, carol, q_listing["id"], 4)
    )
    assert sorted(r.status_code for r in both) == [200, 201], [r.text for r in both]
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(ListingReview)
            .where(ListingReview.listing_id == q_listing["id"])
        )
        successes = await session.scalar(
            select(func.count()).select_from(ApiCall).where(ApiCall.status < 400)
        )
    assert count == 1 and successes == 4
    await Api(client, carol).call(
        "PUT",
        f"/marketplace/reviews/{both[0].json()['data']['review']['id']}",
        json={"stars": 4},
    )

    # The rating: in the listing, in the list, and its sort (unrated last).
    assert await rating(client, wid) == {
        "average": 3.5,
        "count": 2,
        "histogram": histogram(s2=1, s5=1),
    }
    assert (await rating(client, q_listing["id"]))["average"] == 4.0
    r = await client.get(f"{V1}/marketplace/listings", params={"sort": "rating"})
    ranked = [(i["title"], i["rating"]["average"]) for i in r.json()["data"]["items"]]
    assert ranked == [("Quotes", 4.0), ("Weather", 3.5), ("Maps", None)]
    r = await client.get(f"{V1}/marketplace/listings", params={"sort": "newest"})
    assert [i["title"] for i in r.json()["data"]["items"]] == ["Maps", "Quotes", "Weather"]

    # Everyone reads a public listing's reviews, newest first, with its rating.
    r = await reviews(client, wid)
    assert r.status_code == 200, r.text
    page = r.json()["data"]
    assert [(x["stars"], x["mine"]) for x in page["items"]] == [(2, False), (5, False)]
    assert page["reviews"] == page["items"] and page["pagination"]["total"] == 2
    assert page["rating"]["count"] == 2
    mine = (await reviews(client, wid, alice)).json()["data"]["items"]
    assert [x["mine"] for x in mine] == [False, True]
    only_five = (await reviews(client, wid, stars=5)).json()["data"]
    assert [x["id"] for x in only_five["items"]] == [first["id"]]
    assert only_five["rating"]["count"] == 2  # the rating is of all reviews
    paged = (await reviews(client, wid, limit=1, page=2)).json()["data"]
    assert [x["id"] for x in paged["items"]] == [first["id"]]

    # The creator replies once; no one else may (a 404, as for another's object).
    reply_path = f"{V1}/marketplace/reviews/{first['id']}/reply"
    r = await client.post(reply_path, json={"text": "Thanks!"}, headers=bob.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(reply_path, json={"text": "Thanks!"}, headers=creator.headers)
    assert r.status_code == 201, r.text
    assert r.json()["data"]["review"]["reply"]["text"] == "Thanks!"
    r = await client.post(reply_path, json={"text": "Again"}, headers=creator.headers)
    assert_error(r, 409, "CONFLICT")
    shown = (await reviews(client, wid)).json()["data"]["items"][1]
    assert shown["reply"]["text"] == "Thanks!" and shown["reply"]["replied_at"]

    # Another organisation's review is a 404 to change or delete.
    for method in ("PUT", "DELETE"):
        r = await client.request(
            method,
            f"{V1}/marketplace/reviews/{first['id']}",
            json={"stars": 1} if method == "PUT" else None,
            headers=bob.headers,
        )
        assert_error(r, 404, "NOT_FOUND")

    # A private listing's reviews are its organisation's only.
    await seller.call(
        "PUT", f"/marketplace/listings/{m_listing['id']}", json={"visibility": "private"}
    )
    assert_error(await reviews(client, m_listing["id"]), 404, "NOT_FOUND")
    assert_error(await reviews(client, m_listing["id"], bob), 404, "NOT_FOUND")
    assert_error(await review(client, bob, m_listing["id"], 5), 404, "NOT_FOUND")
    r = await reviews(client, m_listing["id"], creator)
    assert r.status_code == 200 and r.json()["data"]["items"] == []

    # Alice withdraws hers; the rating follows.
    await Api(client, alice).call("DELETE", f"/marketplace/reviews/{first['id']}")
    assert await rating(client, wid) == {"average": 2.0, "count": 1, "histogram": histogram(s2=1)}
    assert_error(
        await client.delete(f"{V1}/marketplace/reviews/{first['id']}", headers=alice.headers),
        404,
        "NOT_FOUND",
    )

    for made in (weather, quotes, maps):
        await seller.wait(made["operation"])
        await seller.act("DELETE", f"/apis/{made['api_id']}")
