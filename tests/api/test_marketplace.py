"""The marketplace (seed 002): publish an API with plans, browse and search it
without an account (SQLite FTS5 and PostgreSQL full-text search), versioned plans,
private and unpublished listings."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.test_apis import api_body
from tests.api.test_containers import Api, assert_error

V1 = "/api/v1"
FREEMIUM = {
    "name": "Basic",
    "model": "freemium",
    "included_calls": 100,
    "price_per_call": "0.002",
    "rate_limit_per_minute": 50,
}
FREE = {"name": "Hobby", "model": "free", "included_calls": 10, "rate_limit_per_minute": 5}


def listing_body(api_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_id": api_id,
        "title": "Weather Now",
        "summary": "Current conditions for any city",
        "description": "Hourly **forecasting** for 200,000 cities, with rain radar.",
        "category": "weather",
        "tags": ["Forecast", "maps"],
        "plans": [FREEMIUM, FREE],
        **extra,
    }


async def browse(client: httpx.AsyncClient, query: str = "", **headers: str) -> dict[str, Any]:
    r = await client.get(f"{V1}/marketplace/listings{query}", headers=headers)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def test_publish_browse_search_and_version_plans(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    creator = await register()
    api = Api(client, creator)
    weather = await api.call("POST", "/apis", 202, json=api_body("weather"))
    quotes = await api.call("POST", "/apis", 202, json=api_body("quotes"))

    published = (
        await api.call("POST", "/marketplace/publish", 201, json=listing_body(weather["api_id"]))
    )["listing"]
    lid = published["id"]
    assert published["slug"] == weather["api"]["slug"] and published["status"] == "published"
    assert published["tags"] == ["forecast", "maps"] and published["currency"]
    assert published["price_models"] == ["free", "freemium"]
    basic = next(p for p in published["plans"] if p["key"] == "basic")
    assert (basic["model"], basic["included_calls"], basic["price_per_call"]) == (
        "freemium",
        100,
        "0.002",
    )
    assert (basic["version"], basic["rate_limit_per_minute"]) == (1, 50)
    # Listed once: a second publish is a 409 naming the listing.
    r = await client.post(
        f"{V1}/marketplace/publish", json=listing_body(weather["api_id"]), headers=creator.headers
    )
    assert_error(r, 409, "CONFLICT")
    other_body = listing_body(
        quotes["api_id"],
        title="Stock Quotes",
        summary="Prices of shares",
        description="Delayed quotes of the main exchanges.",
        category="finance",
        tags=["stocks"],
        plans=[{"name": "Pay as you go", "model": "pay_per_use", "price_per_call": "0.01"}],
    )
    await api.call("POST", "/marketplace/publish", 201, json=other_body)

    # Anyone browses, without an account: a word of the description finds it
    # (stemmed: "forecast" finds "forecasting"; a prefix works too), ranked.
    everything = await browse(client)
    assert {item["title"] for item in everything["listings"]} == {"Weather Now", "Stock Quotes"}
    for q in ("forecast", "forec", "RADAR cities", "weather"):
        found = await browse(client, f"?q={q}")
        assert [i["id"] for i in found["items"]] == [lid], q
        assert found["items"][0]["relevance"] > 0
    assert (await browse(client, "?q=forecast+stocks"))["items"] == []
    assert [i["title"] for i in (await browse(client, "?category=finance"))["items"]] == [
        "Stock Quotes"
    ]
    assert [i["title"] for i in (await browse(client, "?tag=maps"))["items"]] == ["Weather Now"]
    assert [i["title"] for i in (await browse(client, "?price_model=pay_per_use"))["items"]] == [
        "Stock Quotes"
    ]
    newest = await browse(client, "?sort=newest&limit=1")
    assert newest["items"][0]["title"] == "Stock Quotes" and newest["pagination"]["total"] == 2
    # Whatever is typed is words, never the engine's syntax.
    for q in ('"', "NEAR(zz yy)", "title:zz OR", "zz & | ! :*", "'; DROP TABLE x; --", "*"):
        assert (await browse(client, "?" + str(httpx.QueryParams({"q": q}))))["items"] == [], q
    for q in ('radar"', "radar:* | !", "(radar)", "-radar"):
        found = await browse(client, "?" + str(httpx.QueryParams({"q": q})))
        assert [i["id"] for i in found["items"]] == [lid], q
    shown = (await client.get(f"{V1}/marketplace/listings/{lid}")).json()["data"]["listing"]
    assert shown["title"] == "Weather Now" and len(shown["plans"]) == 2
    # Credentials, when given, must be good.
    r = await client.get(f"{V1}/marketplace/listings", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401

    # A changed plan gets a new version; an unchanged one keeps its row; one left
    # out retires; search follows the new words.
    changed = dict(FREEMIUM, price_per_call="0.003")
    put = await api.call(
        "PUT",
        f"/marketplace/listings/{lid}",
        json={"description": "Rain radar and storm alerts.", "plans": [changed, FREE]},
    )
    plans = {p["key"]: p for p in put["listing"]["plans"]}
    assert (plans["basic"]["version"], plans["basic"]["price_per_call"]) == (2, "0.003")
    assert plans["basic"]["id"] != basic["id"]
    hobby = next(p for p in published["plans"] if p["key"] == "hobby")
    assert plans["hobby"]["id"] == hobby["id"] and plans["hobby"]["version"] == 1
    put = await api.call("PUT", f"/marketplace/listings/{lid}", json={"plans": [FREE]})
    assert [p["key"] for p in put["listing"]["plans"]] == ["hobby"]
    assert (await browse(client, "?q=hourly"))["items"] == []  # the old description
    assert [i["id"] for i in (await browse(client, "?q=storm"))["items"]] == [lid]

    # Unpublished or private: a 404 to strangers, still the creator's to see.
    stranger = await register()
    await api.call("PUT", f"/marketplace/listings/{lid}", json={"status": "unpublished"})
    assert [i["title"] for i in (await browse(client))["items"]] == ["Stock Quotes"]
    assert (await client.get(f"{V1}/marketplace/listings/{lid}")).status_code == 404
    r = await client.get(f"{V1}/marketplace/listings/{lid}", headers=stranger.headers)
    assert_error(r, 404, "NOT_FOUND")
    assert (await api.call("GET", f"/marketplace/listings/{lid}"))["listing"]["status"] == (
        "unpublished"
    )
    await api.call(
        "PUT", f"/marketplace/listings/{lid}", json={"status": "published", "visibility": "private"}
    )
    assert "Weather Now" not in {i["title"] for i in (await browse(client))["items"]}
    assert "Weather Now" in {i["title"] for i in (await browse(client, **creator.headers))["items"]}
    r = await client.get(f"{V1}/marketplace/listings/{lid}", headers=stranger.headers)
    assert_error(r, 404, "NOT_FOUND")
    # Nor may a stranger change it, or list the creator's API.
    r = await client.put(
        f"{V1}/marketplace/listings/{lid}", json={"title": "Mine"}, headers=stranger.headers
    )
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(
        f"{V1}/marketplace/publish",
        json=listing_body(quotes["api_id"]),
        headers=stranger.headers,
    )
    assert_error(r, 404, "NOT_FOUND")

    for made in (weather, quotes):
        await api.wait(made["operation"])
        await api.act("DELETE", f"/apis/{made['api_id']}")


async def test_plans_and_listings_that_make_no_sense_are_refused(
    client: httpx.AsyncClient, register: Any, podman_host: Any
) -> None:
    creator = await register()
    api = Api(client, creator)
    made = await api.call("POST", "/apis", 202, json=api_body("tiny"))
    bad_plans = [
        {"name": "x", "model": "free", "price_per_call": "1"},
        {"name": "x", "model": "pay_per_use"},
        {"name": "x", "model": "pay_per_use", "price_per_call": "0"},
        {"name": "x", "model": "freemium", "price_per_call": "0.1"},
        {"name": "x", "model": "monthly", "monthly_price": "10"},
        {"name": "x", "model": "monthly", "included_calls": 5, "monthly_price": "-1"},
        {"name": "x", "model": "barter"},
        {"name": "x", "model": "free", "rate_limit_per_minute": 0},
    ]
    for plan in bad_plans:
        r = await client.post(
            f"{V1}/marketplace/publish",
            json=listing_body(made["api_id"], plans=[plan]),
            headers=creator.headers,
        )
        assert_error(r, 422, "VALIDATION_ERROR")
    for extra in (
        {"plans": []},
        {"plans": [FREE, dict(FREE, name="hobby!")]},  # the same plan twice
        {"category": "Not A Category!"},
        {"tags": ["no spaces allowed"]},
        {"visibility": "secret"},
        {"title": ""},
    ):
        r = await client.post(
            f"{V1}/marketplace/publish",
            json=listing_body(made["api_id"], **extra),
            headers=creator.headers,
        )
        assert_error(r, 422, "VALIDATION_ERROR")
    r = await client.post(
        f"{V1}/marketplace/publish",
        json=listing_body("00000000-0000-0000-0000-000000000000"),
        headers=creator.headers,
    )
    assert_error(r, 404, "NOT_FOUND")
    r = await client.post(f"{V1}/marketplace/publish", json=listing_body(made["api_id"]))
    assert r.status_code == 401
    assert (await browse(client))["items"] == []
    await api.wait(made["operation"])
    await api.act("DELETE", f"/apis/{made['api_id']}")
