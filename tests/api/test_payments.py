"""Payments and top-ups over HTTP: bank transfers an admin confirms, direct credits,
Stripe PaymentIntents against a loopback Stripe (tests/stripe_server.py, the real
``stripe`` package making real requests), webhooks, idempotency under retries and
races, tenancy and validation. After every step that moves money the wallet's
balance is checked against the sum of its ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from nefos.billing.ledger import ledger_sum
from nefos.billing.payments import from_stripe_amount, stripe_exponent, to_stripe_amount
from nefos.db.models import LedgerEntry, Payment, Wallet
from nefos.db.session import begin_write
from nefos.domain.errors import ValidationFailed
from nefos.services.billing import BillingService
from nefos.services.subscriptions import EventView
from tests.conftest import Account, free_port, join_org
from tests.stripe_server import (
    CARD_PAID,
    PUBLISHABLE_KEY,
    SECRET_KEY,
    WEBHOOK_SECRET,
    StripeServer,
    sign,
)

V1 = "/api/v1"
HOOK = f"{V1}/payments/stripe/webhook"


# --- helpers ----------------------------------------------------------------------------
async def org_of(client: httpx.AsyncClient, who: Account) -> str:
    r = await client.get(f"{V1}/projects/{who.project_id}", headers=who.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["organisation_id"])


async def money(app: Any, org_id: str) -> tuple[Decimal, Decimal]:
    """(balance, ledger sum) of the organisation's wallet: always equal."""
    async with app.state.core.db.session() as s:
        wallet = await s.scalar(select(Wallet).where(Wallet.organisation_id == org_id))
        if wallet is None:
            return Decimal(0), Decimal(0)
        return wallet.balance, await ledger_sum(s, wallet.id)


async def opened(client: httpx.AsyncClient, app: Any, who: Account, org_id: str) -> Decimal:
    """The balance of the organisation's wallet, opened first (as its first use opens
    it: with the signup credit)."""
    core = app.state.core
    async with core.db.session() as s:
        await begin_write(s)
        await BillingService(core, s).wallet(org_id)
        await s.commit()
    return await balance(app, org_id)


async def balance(app: Any, org_id: str) -> Decimal:
    held, summed = await money(app, org_id)
    assert held == summed, f"balance {held} != ledger sum {summed}"
    return held


async def top_ups(app: Any, payment_id: str) -> int:
    async with app.state.core.db.session() as s:
        return int(
            await s.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.reference_id == payment_id, LedgerEntry.kind == "top_up")
            )
            or 0
        )


async def post(
    client: httpx.AsyncClient, path: str, who: Account | dict[str, str], **kwargs: Any
) -> httpx.Response:
    headers = who.headers if isinstance(who, Account) else who
    extra = kwargs.pop("headers", {})
    return await client.post(V1 + path, headers={**headers, **extra}, **kwargs)


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}


@pytest.fixture
def stripe_server() -> Iterator[StripeServer]:
    server = StripeServer()
    yield server
    server.close()


@pytest.fixture
def stripe_on(app: Any, stripe_server: StripeServer, monkeypatch: pytest.MonkeyPatch):
    """The app's stripe provider set up, pointed at the loopback Stripe."""
    settings = app.state.core.settings
    monkeypatch.setattr(settings, "stripe_secret_key", SECRET_KEY)
    monkeypatch.setattr(settings, "stripe_webhook_secret", WEBHOOK_SECRET)
    monkeypatch.setattr(settings, "stripe_api_base", stripe_server.url)
    return stripe_server


async def webhook(client: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    return await client.post(
        HOOK,
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body), **headers},
    )


# --- manual: a bank transfer an admin confirms ------------------------------------------
async def test_a_bank_transfer_credits_the_wallet_once_when_an_admin_confirms_it(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    r = await post(
        client,
        "/payments",
        owner,
        json={"amount": "120.50", "provider": "manual", "description": "Invoice NEF-1"},
        headers=key(),
    )
    assert r.status_code == 201, r.text
    payment = r.json()["data"]
    assert payment["status"] == "pending" and payment["provider"] == "manual"
    assert (payment["amount"], payment["currency"]) == ("120.50", "USD")
    assert payment["organisation_id"] == org and payment["client_secret"] is None
    start = await balance(app, org)  # the signup credit, nothing more
    assert start == app.state.core.settings.billing_signup_credit > 0

    # Only a platform admin confirms; the owner cannot.
    r = await post(client, f"/payments/{payment['id']}/confirm", owner)
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    assert await balance(app, org) == start

    with app.state.core.events.subscribe(lambda e: e.type == "billing_update") as told:
        r = await post(client, f"/payments/{payment['id']}/confirm", admin)
        assert r.status_code == 200, r.text
        done = r.json()["data"]
        assert done["status"] == "succeeded" and done["confirmed_by"] == admin.id
        assert done["ledger_entry_id"] and done["completed_at"]
        assert await balance(app, org) == start + Decimal("120.50")
        event = await asyncio.wait_for(told.get(), 30)  # a deadline, not a measure
    assert event.organisation_id == org and event.project_id is None
    assert event.data["kind"] == "top_up" and event.data["payment_id"] == payment["id"]
    assert (event.data["amount"], event.data["currency"]) == ("120.50", "USD")
    assert Decimal(event.data["balance"]) == start + Decimal("120.50")
    # The event reaches the organisation's members, not another tenant.
    stranger = await register()
    for who, sees in ((owner, True), (stranger, False)):
        view = EventView(app.state.core, who.access_token)
        await view.refresh()
        assert view.sees(event) is sees

    # Confirming again is a no-op; cancelling or failing it now is a conflict.
    again = await post(client, f"/payments/{payment['id']}/confirm", admin)
    assert again.status_code == 200 and again.json()["data"]["status"] == "succeeded"
    assert await balance(app, org) == start + Decimal("120.50")
    assert await top_ups(app, payment["id"]) == 1
    for path, who in (("cancel", owner), ("fail", admin)):
        r = await post(client, f"/payments/{payment['id']}/{path}", who)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "CONFLICT"
    assert await balance(app, org) == start + Decimal("120.50")

    r = await client.get(f"{V1}/payments", headers=owner.headers, params={"status": "succeeded"})
    listed = r.json()["data"]
    assert [p["id"] for p in listed["items"]] == [payment["id"]]
    assert listed["payments"] == listed["items"] and listed["pagination"]["total"] == 1
    r = await client.get(f"{V1}/payments", headers=owner.headers, params={"status": "pending"})
    assert r.json()["data"]["items"] == []


async def test_racing_confirmations_credit_once(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    r = await post(client, "/payments", owner, json={"amount": "7.25", "provider": "manual"})
    payment_id = r.json()["data"]["id"]
    start = await balance(app, org)
    answers = await asyncio.gather(
        *(post(client, f"/payments/{payment_id}/confirm", admin) for _ in range(10))
    )
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert await balance(app, org) == start + Decimal("7.25")
    assert await top_ups(app, payment_id) == 1


async def test_pending_bank_transfers_can_be_cancelled_or_failed(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    made = [
        (await post(client, "/payments", owner, json={"amount": "5", "provider": "manual"})).json()[
            "data"
        ]
        for _ in range(2)
    ]
    r = await post(client, f"/payments/{made[0]['id']}/cancel", owner)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] == "cancelled"
    assert owner.email in r.json()["data"]["failure_reason"]
    r = await post(client, f"/payments/{made[1]['id']}/fail", admin, json={"reason": "No wire"})
    assert r.status_code == 200, r.text
    assert (r.json()["data"]["status"], r.json()["data"]["failure_reason"]) == ("failed", "No wire")
    for p in made:  # neither can be confirmed any more
        r = await post(client, f"/payments/{p['id']}/confirm", admin)
        assert r.status_code == 409, r.text
    assert await balance(app, org) == start


# --- top-ups: a platform admin's direct credit ------------------------------------------
async def test_a_platform_admin_tops_up_directly_with_a_reason(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    body = {"amount": "50", "organisation_id": org}
    r = await post(client, "/wallet/top-up", admin, json=body)
    assert r.status_code == 422, r.text
    assert "description" in r.json()["error"]["details"]
    r = await post(client, "/wallet/top-up", admin, json={**body, "reason": "Goodwill"})
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert (data["provider"], data["status"], data["description"]) == (
        "credit",
        "succeeded",
        "Goodwill",
    )
    assert data["created_by"] == admin.id == data["confirmed_by"]
    assert await balance(app, org) == start + 50
    # An organisation owner topping up gets a payment to complete, not money.
    r = await post(client, "/wallet/top-up", owner, json={"amount": "50"})
    assert r.status_code == 201, r.text
    assert (r.json()["data"]["provider"], r.json()["data"]["status"]) == ("manual", "pending")
    r = await post(client, "/wallet/top-up", owner, json={"amount": "50", "provider": "credit"})
    assert r.status_code == 403, r.text
    assert await balance(app, org) == start + 50


# --- idempotency ----------------------------------------------------------------------------
async def test_a_thousand_retried_top_ups_with_one_key_credit_once(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    """1,000 retries of one top-up (one Idempotency-Key), 20 of them at once, from 20
    credentials of the platform admin (its session and 19 API keys): the gateway
    replays each credential's own retries, the database's unique key settles the
    rest. Exactly one credit."""
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    creds = [admin.headers]
    for i in range(19):
        r = await post(
            client, "/api-keys", admin, json={"name": f"k{i}", "scopes": ["admin", "billing:write"]}
        )
        assert r.status_code == 201, r.text
        creds.append({"Authorization": f"Bearer {r.json()['data']['key']}"})
    body = {"amount": "33.33", "reason": "Retried", "organisation_id": org}
    headers = {"Idempotency-Key": "top-up-once"}

    first = await asyncio.gather(
        *(post(client, "/wallet/top-up", c, json=body, headers=headers) for c in creds)
    )
    assert sorted(r.status_code for r in first) == [200] * 19 + [201], [r.text for r in first]
    ids = {r.json()["data"]["id"] for r in first}
    assert len(ids) == 1
    (payment_id,) = ids
    assert await balance(app, org) == start + Decimal("33.33")

    for i in range(980):
        r = await post(client, "/wallet/top-up", creds[i % 20], json=body, headers=headers)
        assert r.status_code in (200, 201), r.text
        assert r.json()["data"]["id"] == payment_id
        assert r.headers["idempotent-replayed"] == "true"
    assert await balance(app, org) == start + Decimal("33.33")
    assert await top_ups(app, payment_id) == 1
    async with app.state.core.db.session() as s:
        n = await s.scalar(
            select(func.count()).select_from(Payment).where(Payment.organisation_id == org)
        )
    assert n == 1


async def test_one_caller_racing_itself_credits_once(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    body = {"amount": "4.10", "reason": "Race", "organisation_id": org}
    headers = {"Idempotency-Key": "r"}
    answers = await asyncio.gather(
        *(post(client, "/wallet/top-up", admin, json=body, headers=headers) for _ in range(20))
    )
    made = [a for a in answers if a.status_code == 201]
    # The gateway lets one run; the others are its answer replayed, or "in progress".
    assert all(a.status_code in (201, 409) for a in answers), [a.text for a in answers]
    assert made and len({a.json()["data"]["id"] for a in made}) == 1
    for a in answers:
        if a.status_code == 409:
            assert a.json()["error"]["details"]["Idempotency-Key"] == "in progress"
    assert await balance(app, org) == start + Decimal("4.10")


async def test_reusing_a_key_for_another_payment_is_refused(
    client: httpx.AsyncClient, register: Any, world_owner_key: Any, app: Any
) -> None:
    owner, api_key = world_owner_key
    headers = {"Idempotency-Key": "invoice-7"}
    r = await post(
        client, "/payments", owner, json={"amount": "10", "provider": "manual"}, headers=headers
    )
    assert r.status_code == 201, r.text
    payment_id = r.json()["data"]["id"]
    # The same caller: the gateway compares the whole request (422, like any write).
    r = await post(
        client, "/payments", owner, json={"amount": "11", "provider": "manual"}, headers=headers
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR"
    # Other credentials of the organisation (each an owner of its own at the
    # gateway): the payment this key made differs, a 409.
    for other in ({"amount": "11"}, {"amount": "10", "currency": "JPY"}):
        body = {"amount": "10", "provider": "manual", **other}
        r = await post(client, "/payments", await api_key(), json=body, headers=headers)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "CONFLICT"
        assert r.json()["error"]["details"]["payment_id"] == payment_id
    # The same payment through another credential: the first one, not a second.
    r = await post(
        client,
        "/payments",
        await api_key(),
        json={"amount": "10.00", "provider": "manual"},
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["data"]["id"] == payment_id
    assert r.headers["idempotent-replayed"] == "true"


@pytest.fixture
async def world_owner_key(client: httpx.AsyncClient, register: Any) -> tuple[Account, Any]:
    """An organisation owner, and a maker of new API keys of theirs."""
    owner = await register()

    async def new_key() -> dict[str, str]:
        r = await post(client, "/api-keys", owner, json={"name": "k", "scopes": ["billing:write"]})
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['data']['key']}"}

    return owner, new_key


# --- tenancy, roles and validation ---------------------------------------------------------
async def test_another_tenants_payment_is_not_found(
    client: httpx.AsyncClient, register: Any, app: Any
) -> None:
    owner, other = await register(), await register()
    org = await org_of(client, owner)
    r = await post(client, "/payments", owner, json={"amount": "9", "provider": "manual"})
    payment_id = r.json()["data"]["id"]
    random_id = str(uuid.uuid4())
    for pid in (payment_id, random_id):
        r = await client.get(f"{V1}/payments/{pid}", headers=other.headers)
        assert r.status_code == 404 and r.json()["error"]["message"] == "Payment not found"
        r = await post(client, f"/payments/{pid}/cancel", other)
        assert r.status_code == 404
    r = await client.get(f"{V1}/payments", headers=other.headers, params={"organisation_id": org})
    assert r.status_code == 404
    r = await post(client, "/payments", other, json={"amount": "9", "organisation_id": org})
    assert r.status_code == 404
    r = await post(
        client, "/wallet/top-up", other, json={"amount": "9"}, params={"organisation_id": org}
    )
    assert r.status_code == 404
    r = await client.get(f"{V1}/payments", headers=other.headers)
    assert r.json()["data"]["items"] == []
    assert (await client.get(f"{V1}/payments/{payment_id}", headers=owner.headers)).is_success


async def test_viewers_read_payments_and_admins_pay(
    client: httpx.AsyncClient, register: Any, app: Any
) -> None:
    owner, viewer = await register(), await register()
    org = await org_of(client, owner)
    await join_org(client, org, owner.headers, viewer, "viewer")
    r = await post(client, "/payments", owner, json={"amount": "3", "provider": "manual"})
    payment_id = r.json()["data"]["id"]
    params = {"organisation_id": org}
    r = await client.get(f"{V1}/payments", headers=viewer.headers, params=params)
    assert [p["id"] for p in r.json()["data"]["items"]] == [payment_id]
    assert (await client.get(f"{V1}/payments/{payment_id}", headers=viewer.headers)).is_success
    r = await post(client, "/payments", viewer, json={"amount": "3"}, params=params)
    assert r.status_code == 403
    r = await post(client, f"/payments/{payment_id}/cancel", viewer)
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "-5"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "10.001"}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "1e999999"}, "amount"),
        ({"amount": "1000000000000"}, "amount"),
        ({"amount": 0.1 + 0.2}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "10", "currency": "US"}, "currency"),
        ({"amount": "10", "currency": "EUR"}, "currency"),
        ({"amount": "10", "currency": "€€€"}, "currency"),
        ({"amount": "10", "provider": "paypal"}, "provider"),
        ({"amount": "10", "provider": "stripe"}, "provider"),
        ({"amount": "10", "tip": "1"}, "tip"),
        ({}, "amount"),
    ],
)
async def test_bad_payments_are_refused_in_the_envelope(
    client: httpx.AsyncClient, register: Any, app: Any, body: dict[str, Any], field: str
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    r = await post(client, "/payments", owner, json=body)
    assert r.status_code in (400, 422), r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and field in error["details"], error
    assert r.json()["success"] is False and r.json()["data"] is None
    if body.get("provider") == "stripe":  # the setting is named
        assert "NEFOS_STRIPE_SECRET_KEY" in error["message"]
    assert await balance(app, org) == start
    r = await client.get(f"{V1}/payments", headers=owner.headers)
    assert r.json()["data"]["items"] == []


async def test_a_json_number_amount_is_read_exactly(
    client: httpx.AsyncClient, register: Any
) -> None:
    owner = await register()
    r = await post(client, "/payments", owner, json={"amount": 19.99, "provider": "manual"})
    assert r.status_code == 201, r.text
    assert r.json()["data"]["amount"] == "19.99"
    r = await post(client, "/payments", owner, json={"amount": 20, "provider": "manual"})
    assert r.json()["data"]["amount"] == "20.00"


def test_stripe_amounts_are_in_stripes_own_minor_units() -> None:
    assert to_stripe_amount(Decimal("25.00"), "USD") == 2500
    assert to_stripe_amount(Decimal("500"), "JPY") == 500
    assert to_stripe_amount(Decimal("1.230"), "BHD") == 1230
    assert to_stripe_amount(Decimal("100"), "ISK") == 10000  # Stripe's ISK: hundredths
    with pytest.raises(ValidationFailed):
        to_stripe_amount(Decimal("1.235"), "BHD")  # Stripe: the last digit must be 0
    with pytest.raises(ValidationFailed):
        to_stripe_amount(Decimal("10.50"), "XOF")  # zero-decimal at Stripe
    for cur in ("USD", "JPY", "BHD", "ISK"):
        units = to_stripe_amount(Decimal("120"), cur)
        assert from_stripe_amount(units, cur) == Decimal("120")
        assert stripe_exponent(cur.lower()) == stripe_exponent(cur)


# --- stripe ------------------------------------------------------------------------------------
async def test_a_stripe_payment_is_credited_once_by_its_signed_webhook(
    client: httpx.AsyncClient, register: Any, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    r = await post(
        client,
        "/payments",
        owner,
        json={"amount": "25.00", "description": "Credits"},
        headers=key(),
    )
    assert r.status_code == 201, r.text
    payment = r.json()["data"]
    # With Stripe set up it is the default provider.
    assert (payment["provider"], payment["status"]) == ("stripe", "pending")
    ref = payment["provider_ref"]
    assert ref.startswith("pi_") and payment["client_secret"].startswith(f"{ref}_secret_")
    (call,) = stripe_on.calls_to("POST", "/v1/payment_intents")
    assert call.headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert call.headers["idempotency-key"] == f"nefos-payment-{payment['id']}"
    assert (call.form["amount"], call.form["currency"]) == ("2500", "usd")
    assert call.form["metadata[nefos_payment_id]"] == payment["id"]
    assert call.form["metadata[organisation_id]"] == org
    assert call.form["description"] == "Credits"
    # Its owner sees the client secret again; a list does not show it.
    got = (await client.get(f"{V1}/payments/{payment['id']}", headers=owner.headers)).json()
    assert got["data"]["client_secret"] == payment["client_secret"]
    listed = (await client.get(f"{V1}/payments", headers=owner.headers)).json()["data"]
    assert listed["items"][0]["client_secret"] is None
    assert await balance(app, org) == start

    # The customer pays; Stripe tells, with a signed event.
    stripe_on.pay(ref)
    event = stripe_on.event("payment_intent.succeeded", ref)
    r = await webhook(client, event)
    assert r.status_code == 200, r.text
    told = r.json()["data"]
    assert (told["handled"], told["payment_id"], told["status"]) == (
        True,
        payment["id"],
        "succeeded",
    )
    assert await balance(app, org) == start + 25
    # Stripe delivers again (and again, and with a new event id): nothing more.
    for body in (event, event, stripe_on.event("payment_intent.succeeded", ref)):
        r = await webhook(client, body)
        assert r.status_code == 200 and r.json()["data"]["status"] == "succeeded"
    assert await balance(app, org) == start + 25
    assert await top_ups(app, payment["id"]) == 1
    # An old failure event arriving late changes nothing either.
    r = await webhook(client, stripe_on.event("payment_intent.payment_failed", ref))
    assert r.status_code == 200
    got = (await client.get(f"{V1}/payments/{payment['id']}", headers=owner.headers)).json()
    assert got["data"]["status"] == "succeeded" and got["data"]["client_secret"] is None
    assert await balance(app, org) == start + 25


async def test_a_webhook_that_does_not_verify_is_a_400(
    client: httpx.AsyncClient, register: Any, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    r = await post(client, "/payments", owner, json={"amount": "30"})
    ref = r.json()["data"]["provider_ref"]
    start = await balance(app, org)
    stripe_on.pay(ref)
    event = stripe_on.event("payment_intent.succeeded", ref)
    forged = [
        {"Stripe-Signature": sign(event, secret="whsec_not_the_secret")},
        {"Stripe-Signature": sign(event, timestamp=1_600_000_000)},  # replayed from long ago
        {"Stripe-Signature": "t=1,v1=00"},
        {"Stripe-Signature": "nonsense"},
    ]
    for headers in forged:
        r = await webhook(client, event, **headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "VALIDATION_ERROR"
    r = await client.post(HOOK, content=event, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "Stripe-Signature" in r.json()["error"]["message"]
    tampered = event.replace(b'"amount_received": 3000', b'"amount_received": 3000000')
    assert tampered != event
    r = await client.post(HOOK, content=tampered, headers={"Stripe-Signature": sign(event)})
    assert r.status_code == 400
    r = await client.post(
        HOOK, content=b"\xff\xfe", headers={"Stripe-Signature": sign(b"\xff\xfe")}
    )
    assert r.status_code == 400
    assert await balance(app, org) == start
    # Events about nothing of ours are acknowledged, so that Stripe stops sending them.
    other = stripe_on.intents[ref] | {"id": "pi_elsewhere", "metadata": {}}
    stripe_on.intents["pi_elsewhere"] = other
    r = await webhook(client, stripe_on.event("payment_intent.succeeded", "pi_elsewhere"))
    assert r.status_code == 200 and r.json()["data"]["handled"] is False
    assert await balance(app, org) == start


async def test_webhooks_are_refused_until_their_secret_is_set(
    client: httpx.AsyncClient, app: Any
) -> None:
    assert app.state.core.settings.stripe_webhook_secret is None
    r = await client.post(HOOK, content=b"{}", headers={"Stripe-Signature": sign(b"{}")})
    assert r.status_code == 422 and "NEFOS_STRIPE_WEBHOOK_SECRET" in r.json()["error"]["message"]


async def test_a_declined_card_leaves_the_payment_payable_until_cancelled(
    client: httpx.AsyncClient, register: Any, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    r = await post(client, "/payments", owner, json={"amount": "12"})
    payment, ref = r.json()["data"], r.json()["data"]["provider_ref"]
    stripe_on.decline(ref)
    r = await webhook(client, stripe_on.event("payment_intent.payment_failed", ref))
    assert r.status_code == 200 and r.json()["data"]["status"] == "pending"
    got = (await client.get(f"{V1}/payments/{payment['id']}", headers=owner.headers)).json()["data"]
    assert got["failure_reason"] == "Your card was declined."
    stripe_on.cancel(ref)
    r = await webhook(client, stripe_on.event("payment_intent.canceled", ref))
    assert r.json()["data"]["status"] == "cancelled"
    assert await balance(app, org) == start


async def test_cancelling_a_stripe_payment_cancels_its_payment_intent(
    client: httpx.AsyncClient, register: Any, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    r = await post(client, "/payments", owner, json={"amount": "15"})
    payment, ref = r.json()["data"], r.json()["data"]["provider_ref"]
    r = await post(client, f"/payments/{payment['id']}/cancel", owner)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] == "cancelled"
    assert stripe_on.intents[ref]["status"] == "canceled"
    assert stripe_on.calls_to("POST", f"/v1/payment_intents/{ref}/cancel")
    # One the customer paid meanwhile cannot be cancelled: it is credited instead.
    r = await post(client, "/payments", owner, json={"amount": "16"})
    paid, ref = r.json()["data"], r.json()["data"]["provider_ref"]
    stripe_on.pay(ref)
    r = await post(client, f"/payments/{paid['id']}/cancel", owner)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["details"]["status"] == "succeeded"
    assert await balance(app, org) == start + 16


async def test_an_admin_confirm_asks_stripe_when_the_webhook_was_lost(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    r = await post(client, "/payments", owner, json={"amount": "40"})
    payment, ref = r.json()["data"], r.json()["data"]["provider_ref"]
    r = await post(client, f"/payments/{payment['id']}/confirm", admin)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["details"]["stripe_status"] == "requires_payment_method"
    stripe_on.pay(ref)
    r = await post(client, f"/payments/{payment['id']}/confirm", admin)
    assert r.status_code == 200 and r.json()["data"]["status"] == "succeeded"
    # The webhook, late, changes nothing.
    r = await webhook(client, stripe_on.event("payment_intent.succeeded", ref))
    assert r.status_code == 200
    assert await balance(app, org) == start + 40
    assert await top_ups(app, payment["id"]) == 1


async def test_stripe_refusing_a_payment_fails_it(
    client: httpx.AsyncClient, register: Any, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    r = await post(client, "/payments", owner, json={"amount": "0.10"}, headers=key())
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "Amount must be at least $0.50 usd" in error["message"]
    assert error["details"]["stripe_code"] == "amount_too_small"
    listed = (await client.get(f"{V1}/payments", headers=owner.headers)).json()["data"]
    (failed,) = listed["items"]
    assert failed["status"] == "failed" and "at least" in failed["failure_reason"]


async def test_a_stripe_outage_is_a_503_and_the_retry_completes_the_payment(
    client: httpx.AsyncClient,
    register: Any,
    app: Any,
    stripe_on: StripeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await register()
    settings = app.state.core.settings
    monkeypatch.setattr(settings, "stripe_api_base", f"http://127.0.0.1:{free_port()}")
    headers = {"Idempotency-Key": "during-outage"}
    r = await post(client, "/payments", owner, json={"amount": "20"}, headers=headers)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    (pending,) = (await client.get(f"{V1}/payments", headers=owner.headers)).json()["data"]["items"]
    assert pending["status"] == "pending" and pending["provider_ref"] is None
    monkeypatch.setattr(settings, "stripe_api_base", stripe_on.url)
    r = await post(client, "/payments", owner, json={"amount": "20"}, headers=headers)
    assert r.status_code == 200, r.text  # the payment the first attempt made
    done = r.json()["data"]
    assert done["id"] == pending["id"] and done["client_secret"]
    assert stripe_on.intents[done["provider_ref"]]["metadata"]["nefos_payment_id"] == done["id"]


async def test_a_wrong_stripe_key_is_a_503_naming_the_setting(
    client: httpx.AsyncClient,
    register: Any,
    app: Any,
    stripe_on: StripeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await register()
    monkeypatch.setattr(app.state.core.settings, "stripe_secret_key", "sk_test_wrong")
    r = await post(client, "/payments", owner, json={"amount": "20"})
    assert r.status_code == 503, r.text
    assert "NEFOS_STRIPE_SECRET_KEY" in r.json()["error"]["message"]


async def test_a_top_up_lifts_a_depleted_organisations_refusal_at_once(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any
) -> None:
    from nefos.billing import ledger
    from nefos.db.models import BillingAccount
    from nefos.db.types import utcnow

    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    async with app.state.core.db.session() as s:  # spent, and marked so by the engine
        await begin_write(s)
        wallet = await s.scalar(select(Wallet).where(Wallet.organisation_id == org))
        await ledger.post(s, wallet, "charge", -start, description="Usage")
        account = await s.get(BillingAccount, org)
        account.depleted_since = utcnow()
        await s.commit()
    assert await balance(app, org) == 0
    body = {"amount": "20", "reason": "Paid by phone", "organisation_id": org}
    r = await post(client, "/wallet/top-up", admin, json=body)
    assert r.status_code == 201, r.text
    assert await balance(app, org) == 20
    async with app.state.core.db.session() as s:
        account = await s.get(BillingAccount, org)
        assert account.depleted_since is None and account.suspended_at is None


async def test_payment_methods_say_how_the_platform_takes_money(
    client: httpx.AsyncClient, register: Any, admin: Account, app: Any, stripe_server: StripeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    owner = await register()
    r = await client.get(f"{V1}/payments/methods", headers=owner.headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"providers": ["manual"], "default": "manual", "card": None}
    r = await client.get(f"{V1}/payments/methods", headers=admin.headers)
    assert r.json()["data"]["providers"] == ["manual", "credit"]
    assert (await client.get(f"{V1}/payments/methods")).status_code == 401
    # Stripe on, without a publishable key: PaymentIntents, but no card form.
    settings = app.state.core.settings
    monkeypatch.setattr(settings, "stripe_secret_key", SECRET_KEY)
    monkeypatch.setattr(settings, "stripe_api_base", stripe_server.url)
    r = await client.get(f"{V1}/payments/methods", headers=owner.headers)
    assert r.json()["data"] == {
        "providers": ["stripe", "manual"],
        "default": "stripe",
        "card": None,
    }
    monkeypatch.setattr(settings, "stripe_publishable_key", PUBLISHABLE_KEY)
    r = await client.get(f"{V1}/payments/methods", headers=owner.headers)
    assert r.json()["data"]["card"] == {
        "publishable_key": PUBLISHABLE_KEY,
        "js_url": "https://js.stripe.com/v3/",
    }


async def test_a_payer_refreshes_a_stripe_payment_once_stripe_js_took_the_card(
    client: httpx.AsyncClient, register: Any, app: Any, stripe_on: StripeServer
) -> None:
    owner = await register()
    org = await org_of(client, owner)
    start = await opened(client, app, owner, org)
    r = await post(client, "/payments", owner, json={"amount": "18"})
    payment, ref = r.json()["data"], r.json()["data"]["provider_ref"]
    # Nothing paid yet: the refresh asks Stripe and leaves it pending.
    r = await post(client, f"/payments/{payment['id']}/refresh", owner)
    assert r.status_code == 200 and r.json()["data"]["status"] == "pending", r.text
    assert r.json()["data"]["client_secret"]  # still payable, by the payer
    # Stripe.js confirms with the publishable key and a card; the refresh credits.
    assert stripe_on._confirm(f"/v1/payment_intents/{ref}/confirm", {
        "client_secret": payment["client_secret"], "payment_method_data[card][number]": CARD_PAID,
    })[0] == 200  # fmt: skip
    r = await post(client, f"/payments/{payment['id']}/refresh", owner)
    assert r.status_code == 200 and r.json()["data"]["status"] == "succeeded", r.text
    assert r.json()["data"]["client_secret"] is None
    # Again, and the webhook after it: credited once.
    r = await post(client, f"/payments/{payment['id']}/refresh", owner)
    assert r.json()["data"]["status"] == "succeeded"
    assert (
        await webhook(client, stripe_on.event("payment_intent.succeeded", ref))
    ).status_code == 200
    assert await balance(app, org) == start + 18
    assert await top_ups(app, payment["id"]) == 1
    # A bank transfer has nobody to ask; another tenant's payment is not found.
    r = await post(client, "/payments", owner, json={"amount": "5", "provider": "manual"})
    manual = r.json()["data"]
    r = await post(client, f"/payments/{manual['id']}/refresh", owner)
    assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT"
    other = await register()
    r = await post(client, f"/payments/{payment['id']}/refresh", other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
