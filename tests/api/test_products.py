"""The catalogue (``/products``), its versioned prices, and billing accounts
(``/billing/account``): currency, low-balance threshold and a reseller's margin."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select

from nefos.billing import catalogue, ledger
from nefos.billing.money import money_str
from nefos.db.models import LedgerEntry, Wallet
from nefos.db.session import begin_write
from tests.conftest import Account, join_org

D = Decimal
V1 = "/api/v1"


async def call(
    client: httpx.AsyncClient, who: Account, method: str, path: str, status: int = 200, **kw: Any
) -> Any:
    r = await client.request(method, V1 + path, headers=who.headers, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    if status >= 400:
        assert body["success"] is False and body["data"] is None
        return body["error"]
    return body["data"]


async def reseller_with_child(client: httpx.AsyncClient, owner: Account) -> tuple[str, str]:
    reseller = await call(
        client, owner, "POST", "/organisations", 201, json={"name": "Res", "kind": "reseller"}
    )
    child = await call(
        client,
        owner,
        "POST",
        f"/organisations/{reseller['id']}/children",
        201,
        json={"name": "Customer"},
    )
    return reseller["id"], child["id"]


def prices(listing: dict[str, Any]) -> dict[str, str]:
    return {p["sku"]: p["unit_price"] for p in listing["items"]}


async def test_a_fresh_install_has_the_default_catalogue(client, register):
    user = await register()
    data = await call(client, user, "GET", "/products", params={"limit": 500})
    assert data["currency"] == "USD"
    assert data["pagination"]["total"] == len(catalogue.SKUS)
    assert data["products"] == data["items"]
    got = prices(data)
    assert got == {s.sku: money_str(s.default, "USD") for s in catalogue.SKUS}
    assert got["vcpu_hour"] == "0.05" and got["ram_gb_hour"] == "0.005"
    cpu = next(p for p in data["items"] if p["sku"] == "vcpu_hour")
    assert cpu["meter"] == "cpu" and cpu["unit"] == "vCPU-hour" and cpu["currency"] == "USD"
    assert cpu["effective_from"].startswith("2000-01-01") and cpu["effective_to"] is None
    # Asking again makes nothing new.
    again = await call(client, user, "GET", "/products", params={"limit": 500})
    assert [p["id"] for p in again["items"]] == [p["id"] for p in data["items"]]
    # A currency with no catalogue has none (only admins open one, by setting a price).
    assert (await call(client, user, "GET", "/products", params={"currency": "CHF"}))["items"] == []


async def test_a_new_price_closes_the_old_one(client, register, admin):
    user = await register()
    await call(client, user, "GET", "/products")
    new = await call(
        client, admin, "PUT", "/products/vcpu_hour", json={"unit_price": "0.07", "name": "vCPU"}
    )
    assert new["unit_price"] == "0.07" and new["effective_to"] is None and new["name"] == "vCPU"
    again = await call(client, admin, "PUT", "/products/vcpu_hour", json={"unit_price": 0.08})
    assert again["unit_price"] == "0.08" and again["name"] == "vCPU"  # the name stays
    history = await call(client, admin, "GET", "/products/vcpu_hour/history")
    rows = history["items"]
    assert [r["unit_price"] for r in rows] == ["0.08", "0.07", "0.05"]
    # Each closes where the next opens: no gap, no overlap, one open row.
    assert rows[0]["effective_to"] is None
    assert rows[1]["effective_to"] == rows[0]["effective_from"]
    assert rows[2]["effective_to"] == rows[1]["effective_from"]
    assert prices(await call(client, user, "GET", "/products"))["vcpu_hour"] == "0.08"
    # A flavor gets a price of its own; a price in a new currency opens its catalogue.
    flavor = await call(
        client, admin, "PUT", "/products/flavor:m1.small", json={"unit_price": "0.02"}
    )
    assert flavor["sku"] == "flavor:m1.small" and flavor["meter"] == "instance"
    assert flavor["flavor"] == "m1.small" and flavor["unit"] == "hour"
    eur = await call(
        client, admin, "PUT", "/products/vcpu_hour", json={"unit_price": "0.04", "currency": "eur"}
    )
    assert eur["currency"] == "EUR"
    listed = await call(client, user, "GET", "/products", params={"currency": "EUR", "limit": 500})
    assert listed["currency"] == "EUR" and prices(listed)["vcpu_hour"] == "0.04"
    assert prices(listed)["ram_gb_hour"] == "0.005"
    # Prices with nine places are exact; zero is a price too.
    await call(client, admin, "PUT", "/products/network_gb", json={"unit_price": "0.000000001"})
    await call(client, admin, "PUT", "/products/api_call", json={"unit_price": "0"})
    listed = prices(await call(client, user, "GET", "/products", params={"limit": 500}))
    assert listed["network_gb"] == "0.000000001" and listed["api_call"] == "0.00"


async def test_bad_prices_and_skus_are_refused_in_the_envelope(client, register, admin):
    user = await register()
    for body in (
        {"unit_price": "-0.01"},
        {"unit_price": "0.0000000001"},  # ten places
        {"unit_price": "abc"},
        {"unit_price": "NaN"},
        {"unit_price": "1e15"},
        {"unit_price": "1000000.000000001"},  # over a million a unit
        {"unit_price": True},
        {},
        {"unit_price": "1", "currency": "EURO"},
        {"unit_price": "1", "extra": 1},
    ):
        error = await call(client, admin, "PUT", "/products/vcpu_hour", 422, json=body)
        assert error["code"] == "VALIDATION_ERROR", body
    error = await call(client, admin, "PUT", "/products/gpu_hour", 422, json={"unit_price": "1"})
    assert error["message"] == "Unknown SKU" and error["details"]["sku"] == "gpu_hour"
    for sku in ("BAD SKU", "flavor:", "flavor:-x", "x" * 90):
        error = await call(client, admin, "PUT", f"/products/{sku}", 422, json={"unit_price": "1"})
        assert error["code"] == "VALIDATION_ERROR", sku
    error = await call(client, admin, "GET", "/products/nope_hour/history", 422)
    assert error["message"] == "Unknown SKU"
    assert await call(client, user, "GET", "/products", 422, params={"currency": "12"})
    # Only platform admins set prices or read their history.
    for method, path, kw in (
        ("PUT", "/products/vcpu_hour", {"json": {"unit_price": "9"}}),
        ("GET", "/products/vcpu_hour/history", {}),
    ):
        assert (await call(client, user, method, path, 403, **kw))["code"] == "FORBIDDEN"
    assert prices(await call(client, user, "GET", "/products"))["vcpu_hour"] == "0.05"


async def test_a_resellers_margin_applies_to_its_children_not_to_itself(client, register):
    owner = await register()
    reseller, child = await reseller_with_child(client, owner)
    account = await call(
        client,
        owner,
        "PUT",
        "/billing/account",
        json={"organisation_id": reseller, "margin_percent": "25"},
    )
    assert account["margin_percent"] == "25" and account["organisation_kind"] == "reseller"
    base = prices(
        await call(
            client, owner, "GET", "/products", params={"organisation_id": reseller, "limit": 500}
        )
    )
    marked = prices(await call_with_header(client, owner, child))
    assert base["vcpu_hour"] == "0.05" and base["ram_gb_hour"] == "0.005"
    assert D(marked["vcpu_hour"]) == D("0.05") * D("1.25") == D("0.0625")
    assert D(marked["ram_gb_hour"]) == D("0.005") * D("1.25")
    assert D(marked["storage_gb_day"]) == D("0.125")
    # A fractional margin stays exact.
    await call(
        client,
        owner,
        "PUT",
        "/billing/account",
        json={"organisation_id": reseller, "margin_percent": "12.3456"},
    )
    marked = prices(await call_with_header(client, owner, child))
    assert D(marked["vcpu_hour"]) == D("0.05") * (1 + D("12.3456") / 100)
    # The owner's personal organisation pays list prices.
    assert prices(await call(client, owner, "GET", "/products"))["vcpu_hour"] == "0.05"


async def call_with_header(client: httpx.AsyncClient, who: Account, org_id: str) -> Any:
    r = await client.get(
        V1 + "/products",
        headers={**who.headers, "X-Organisation-ID": org_id},
        params={"limit": 500},
    )
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def test_margin_rules(client, register):
    owner = await register()
    reseller, child = await reseller_with_child(client, owner)
    personal = (await call(client, owner, "GET", "/billing/account"))["organisation_id"]
    # A standard organisation has no margin to set.
    for org_id in (personal, child):
        error = await call(
            client,
            owner,
            "PUT",
            "/billing/account",
            422,
            json={"organisation_id": org_id, "margin_percent": "10"},
        )
        assert error["details"]["margin_percent"] == "reseller organisations only"
    for bad in ("-1", "1000.01", "1.00001", "x"):
        await call(
            client,
            owner,
            "PUT",
            "/billing/account",
            422,
            json={"organisation_id": reseller, "margin_percent": bad},
        )
    await call(
        client,
        owner,
        "PUT",
        "/billing/account",
        json={"organisation_id": reseller, "margin_percent": "1000"},
    )
    # The child's own admin sets nothing on the reseller, and cannot even see it.
    child_admin = await register()
    await join_org(client, child, owner.headers, child_admin, "admin")
    error = await call(
        client,
        child_admin,
        "PUT",
        "/billing/account",
        404,
        json={"organisation_id": reseller, "margin_percent": "0"},
    )
    assert error["code"] == "NOT_FOUND"
    # A viewer of the reseller reads its settings but changes nothing.
    viewer = await register()
    await join_org(client, reseller, owner.headers, viewer, "viewer")
    got = await call(
        client, viewer, "GET", "/billing/account", params={"organisation_id": reseller}
    )
    assert got["margin_percent"] == "1000"
    await call(
        client,
        viewer,
        "PUT",
        "/billing/account",
        403,
        json={"organisation_id": reseller, "margin_percent": "1"},
    )
    # Another tenant's organisation does not exist for them.
    stranger = await register()
    for method, kw in (
        ("GET", {"params": {"organisation_id": reseller}}),
        ("PUT", {"json": {"organisation_id": reseller}}),
    ):
        assert (await call(client, stranger, method, "/billing/account", 404, **kw))[
            "code"
        ] == "NOT_FOUND"


async def test_threshold_and_currency_while_untouched(client, register, app):
    user = await register()
    account = await call(client, user, "GET", "/billing/account")
    org_id = account["organisation_id"]
    assert account == {
        **account,
        "currency": "USD",
        "low_balance_threshold": "5.00",
        "margin_percent": "0",
        "status": "active",
        "organisation_kind": "standard",
    }
    changed = await call(
        client, user, "PUT", "/billing/account", json={"low_balance_threshold": "12.5"}
    )
    assert changed["low_balance_threshold"] == "12.50"
    await call(
        client, user, "PUT", "/billing/account", 422, json={"low_balance_threshold": "1.234"}
    )
    await call(client, user, "PUT", "/billing/account", 422, json={"low_balance_threshold": "-1"})
    await call(client, user, "PUT", "/billing/account", 422, json={"low_balance_threshold": "1e10"})
    # The wallet exists with its signup credit only: the currency may still change,
    # and the credit moves along (granted once).
    core = app.state.core
    credit = core.settings.billing_signup_credit
    r = await client.get(V1 + "/billing/subscription", headers=user.headers)
    assert r.json()["data"]["balance"] == f"{credit:.2f}"
    changed = await call(client, user, "PUT", "/billing/account", json={"currency": "eur"})
    assert changed["currency"] == "EUR"
    sub = await call(client, user, "GET", "/billing/subscription")
    assert sub["currency"] == "EUR" and sub["balance"] == f"{credit:.2f}"
    assert (await call(client, user, "GET", "/products"))["currency"] == "EUR"
    # And back: the EUR credit returns to the USD wallet.
    await call(client, user, "PUT", "/billing/account", json={"currency": "USD"})
    async with core.db.sessionmaker() as session:
        wallets = {
            w.currency: w
            for w in (
                await session.scalars(select(Wallet).where(Wallet.organisation_id == org_id))
            ).all()
        }
        assert {c: w.balance for c, w in wallets.items()} == {"USD": credit, "EUR": D(0)}
        for w in wallets.values():
            assert await ledger.ledger_sum(session, w.id) == w.balance
        entries = await session.scalar(select(func.count()).select_from(LedgerEntry))
        assert entries == 5  # signup, out, in (made empty), out, in
    # Once money moved for real, the currency is fixed.
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        usd = await session.get(Wallet, wallets["USD"].id)
        assert usd is not None
        await ledger.post(session, usd, "top_up", D("20.00"), key="t-1")
        await session.commit()
    error = await call(client, user, "PUT", "/billing/account", 409, json={"currency": "EUR"})
    assert error["code"] == "CONFLICT"
    assert (await call(client, user, "GET", "/billing/account"))["currency"] == "USD"
    # Not a currency at all.
    await call(client, user, "PUT", "/billing/account", 422, json={"currency": "E1R"})


async def test_unit_prices_keep_their_places_in_any_currency(client, register, admin):
    """Issue 14: a unit price is not an amount: 0.000013 a second stays 0.000013,
    in USD and in JPY (whose amounts have no decimals)."""
    user = await register()
    for currency in ("USD", "JPY"):
        put = {"unit_price": "0.000013", "currency": currency}
        new = await call(client, admin, "PUT", "/products/vcpu_hour", json=put)
        assert new["unit_price"] == "0.000013"
        listed = await call(client, user, "GET", "/products", params={"currency": currency})
        assert prices(listed)["vcpu_hour"] == "0.000013"


async def test_a_flavor_is_retired_and_offered_again(client, register, admin):
    user = await register()
    made = await call(
        client, admin, "PUT", "/products/flavor:r1.tiny",
        json={"unit_price": "0.03", "name": "Tiny", "description": "1 vCPU, 512 MB"},
    )  # fmt: skip
    assert (made["name"], made["description"]) == ("Tiny", "1 vCPU, 512 MB")
    assert (
        prices(await call(client, user, "GET", "/products", params={"limit": 500}))[
            "flavor:r1.tiny"
        ]
        == "0.03"
    )
    # Users and API keys may not; a base SKU is never retired; an unknown SKU is a 422.
    denied = await call(client, user, "DELETE", "/products/flavor:r1.tiny", 403)
    assert denied["code"] == "FORBIDDEN"
    base = await call(client, admin, "DELETE", "/products/vcpu_hour", 409)
    assert base["code"] == "CONFLICT" and base["details"]["sku"] == "vcpu_hour"
    await call(client, admin, "DELETE", "/products/bogus", 422)
    retired = await call(client, admin, "DELETE", "/products/flavor:r1.tiny")
    assert retired["sku"] == "flavor:r1.tiny" and retired["effective_to"] is not None
    listed = prices(await call(client, user, "GET", "/products", params={"limit": 500}))
    assert "flavor:r1.tiny" not in listed and "vcpu_hour" in listed
    # Again: nothing in force is a 404; its history keeps the closed price.
    gone = await call(client, admin, "DELETE", "/products/flavor:r1.tiny", 404)
    assert gone["code"] == "NOT_FOUND"
    history = await call(client, admin, "GET", "/products/flavor:r1.tiny/history")
    assert [h["effective_to"] is None for h in history["items"]] == [False]
    # Offered again, from now on.
    await call(client, admin, "PUT", "/products/flavor:r1.tiny", json={"unit_price": "0.04"})
    history = await call(client, admin, "GET", "/products/flavor:r1.tiny/history")
    assert [h["unit_price"] for h in history["items"]] == ["0.04", "0.03"]
