"""Payouts of earnings and the seed 002 revenue views: a reseller's margin on its
child's usage becomes its revenue; payouts are limited to earnings, idempotent
(also under concurrency), settled or rejected (refunded) by platform admins."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select, update

from nefos.billing import ledger
from nefos.db.models import (
    BillingAccount,
    LedgerEntry,
    Organisation,
    Payout,
    UsageRecord,
    User,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import ValidationFailed
from nefos.schemas.billing import PayoutRequest
from nefos.services.billing import BillingService
from nefos.services.payouts import PayoutService, earnings
from nefos.services.principal import Principal
from tests.api.test_products import call, reseller_with_child
from tests.conftest import Account, join_org

D = Decimal
V1 = "/api/v1"


async def earn(app: Any, org_id: str, amount: str) -> str:
    """Credit ``org_id`` with revenue (as the engine does for a reseller's margin);
    its wallet's id."""
    core = app.state.core
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await BillingService(core, session).wallet(org_id)
        await ledger.post(session, wallet, "revenue", D(amount), key=f"rev-{uuid.uuid4()}")
        await session.commit()
        return wallet.id


async def balanced(app: Any, wallet_id: str) -> Decimal:
    """The wallet's balance, checked against the sum of its ledger."""
    async with app.state.core.db.sessionmaker() as session:
        wallet = await session.get(Wallet, wallet_id)
        assert wallet is not None
        assert wallet.balance == await ledger.ledger_sum(session, wallet_id)
        return wallet.balance


async def payouts_of(app: Any, org_id: str) -> list[Payout]:
    async with app.state.core.db.sessionmaker() as session:
        return list(
            (await session.scalars(select(Payout).where(Payout.organisation_id == org_id))).all()
        )


def request(org_id: str, amount: Any, **extra: Any) -> dict[str, Any]:
    return {"json": {"amount": amount, "organisation_id": org_id, **extra}}


async def test_a_resellers_margin_on_its_childs_usage_is_its_revenue(client, register, app):
    owner = await register()
    reseller, child = await reseller_with_child(client, owner)
    await call(
        client,
        owner,
        "PUT",
        "/billing/account",
        json={"organisation_id": reseller, "margin_percent": "25"},
    )
    core = app.state.core
    start = utcnow().replace(microsecond=0) - timedelta(hours=3)
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        session.add(
            UsageRecord(
                key=f"test:{uuid.uuid4()}",
                organisation_id=child,
                project_id=str(uuid.uuid4()),
                resource_kind="container",
                resource_id=str(uuid.uuid4()),
                resource_name="app",
                state="running",
                started_at=start,
                ended_at=start + timedelta(hours=2),
                seconds=7200,
                cpu_milli=2000,
            )
        )
        await session.commit()
    await app.state.billing.run_once()
    # 4 vCPU-hours: 0.20 at list price, 0.25 with the margin; the 0.05 is revenue.
    child_view = await call(
        client, owner, "GET", "/billing/overview", params={"organisation_id": child}
    )
    assert child_view["total_charges"] == "0.25" and child_view["total_revenue"] == "0.00"
    view = await call(
        client, owner, "GET", "/billing/overview", params={"organisation_id": reseller}
    )
    assert view["total_revenue"] == "0.05" and view["available_earnings"] == "0.05"
    assert view["total_charges"] == "0.00"
    [entry] = (
        await call(
            client,
            owner,
            "GET",
            "/billing/transactions",
            params={"organisation_id": reseller, "type": "revenue"},
        )
    )["items"]
    assert entry["amount"] == "0.05" and entry["type"] == entry["kind"] == "revenue"


async def test_payout_requests_are_limited_to_earnings(client, register, app):
    owner = await register()
    reseller, _ = await reseller_with_child(client, owner)
    wallet_id = await earn(app, reseller, "50.00")
    credit = app.state.core.settings.billing_signup_credit
    assert await balanced(app, wallet_id) == credit + 50
    for amount, field in (
        ("60.00", "available"),  # more than the earnings (the balance would do)
        ("5", "minimum"),  # under billing_min_payout
        ("10.001", "amount"),  # more places than USD has
        ("abc", None),
        ("-5", None),
        (0, None),
        ("1e400", None),
    ):
        error = await call(
            client, owner, "POST", "/billing/payout-request", 422, **request(reseller, amount)
        )
        assert error["code"] == "VALIDATION_ERROR", amount
        if field:
            assert field in error["details"], (amount, error)
    await call(
        client,
        owner,
        "POST",
        "/billing/payout-request",
        422,
        **request(reseller, "20", currency="EUR"),
    )
    await call(
        client,
        owner,
        "POST",
        "/billing/payout-request",
        422,
        **request(reseller, "20", method="cash"),
    )
    made = await call(
        client,
        owner,
        "POST",
        "/billing/payout-request",
        201,
        **request(reseller, "30", destination="DE89 3704 0044 0532 0130 00"),
    )
    assert made["amount"] == "30.00" and made["status"] == "pending" and made["currency"] == "USD"
    assert made["method"] == "bank_transfer" and made["requested_by"] == owner.id
    assert made["destination"].startswith("DE89")
    assert await balanced(app, wallet_id) == credit + 20
    async with app.state.core.db.sessionmaker() as session:
        assert await earnings(session, wallet_id) == D(20)
        entry = await session.get(LedgerEntry, made["ledger_entry_id"])
        assert entry is not None and entry.key == f"payout:{made['id']}" and entry.amount == -30
    view = await call(
        client, owner, "GET", "/billing/overview", params={"organisation_id": reseller}
    )
    assert (view["available_earnings"], view["pending_payouts"], view["total_payouts"]) == (
        "20.00",
        "30.00",
        "30.00",
    )
    error = await call(
        client, owner, "POST", "/billing/payout-request", 422, **request(reseller, "25")
    )
    assert error["details"]["available"] == "20.00"
    # A standard organisation with no revenue has nothing to pay out, whatever its balance.
    personal = (await call(client, owner, "GET", "/billing/account"))["organisation_id"]
    error = await call(
        client, owner, "POST", "/billing/payout-request", 422, **request(personal, "10")
    )
    assert error["details"]["available"] == "0.00"
    # Members may not ask; another tenant's organisation does not exist.
    member, stranger = await register(), await register()
    await join_org(client, reseller, owner.headers, member, "member")
    await call(client, member, "POST", "/billing/payout-request", 403, **request(reseller, "10"))
    await call(client, stranger, "POST", "/billing/payout-request", 404, **request(reseller, "10"))
    assert len(await payouts_of(app, reseller)) == 1


async def test_payout_requests_are_idempotent_even_concurrently(client, register, app):
    owner = await register()
    reseller, _ = await reseller_with_child(client, owner)
    wallet_id = await earn(app, reseller, "100.00")
    credit = app.state.core.settings.billing_signup_credit

    async def send(who: Account, key: str, amount: str = "10") -> httpx.Response:
        return await client.post(
            V1 + "/billing/payout-request",
            headers={**who.headers, "Idempotency-Key": key},
            json={"amount": amount, "organisation_id": reseller},
        )

    first = await send(owner, "k-1")
    again = await send(owner, "k-1")
    assert first.status_code == 201 and again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    # Another admin of the organisation, the same key: the database's unique key
    # gives the first payout back (200), and a different amount is refused.
    colleague = await register()
    await join_org(client, reseller, owner.headers, colleague, "admin")
    theirs = await send(colleague, "k-1")
    assert theirs.status_code == 200 and theirs.json()["data"]["id"] == first.json()["data"]["id"]
    assert (await send(colleague, "k-1", "11")).status_code == 422
    # Twenty at once with one key: one payout.
    answers = await asyncio.gather(*(send(owner, "k-2") for _ in range(20)))
    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers]
    made = {a.json()["data"]["id"] for a in answers if a.status_code == 201}
    assert len(made) == 1
    assert len(await payouts_of(app, reseller)) == 2
    assert await balanced(app, wallet_id) == credit + 80
    # The service itself (past the middleware), in parallel sessions, one key: one payout.
    core = app.state.core

    async def direct(key: str, amount: str = "10") -> Any:
        async with core.db.sessionmaker() as session:
            user = await session.get(User, owner.id)
            org = await session.get(Organisation, reseller)
            assert user is not None and org is not None
            body = PayoutRequest(amount=D(amount), organisation_id=reseller)
            try:
                payout, _ = await PayoutService(core, session).request(
                    Principal(user=user), org, body, key
                )
            except ValidationFailed as exc:
                return exc
            return payout.id

    ids = await asyncio.gather(*(direct("k-3") for _ in range(10)))
    assert len(set(ids)) == 1 and isinstance(ids[0], str)
    assert await balanced(app, wallet_id) == credit + 70
    # Ten at once with distinct keys against 70 of earnings: exactly seven.
    results = await asyncio.gather(*(direct(f"k-many-{i}") for i in range(10)))
    done = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, ValidationFailed)]
    assert len(done) == 7 and len(refused) == 3
    assert await balanced(app, wallet_id) == credit
    async with core.db.sessionmaker() as session:
        assert await earnings(session, wallet_id) == 0


async def test_platform_admins_settle_or_reject_and_a_rejection_refunds(
    client, register, admin, app
):
    owner = await register()
    reseller, _ = await reseller_with_child(client, owner)
    wallet_id = await earn(app, reseller, "40")
    credit = app.state.core.settings.billing_signup_credit
    paid = await call(
        client, owner, "POST", "/billing/payout-request", 201, **request(reseller, "15")
    )
    refused = await call(
        client, owner, "POST", "/billing/payout-request", 201, **request(reseller, "20")
    )
    assert await balanced(app, wallet_id) == credit + 5
    # Only platform admins decide.
    for action in ("settle", "reject"):
        await call(client, owner, "POST", f"/billing/payouts/{paid['id']}/{action}", 403)
    settled = await call(
        client, admin, "POST", f"/billing/payouts/{paid['id']}/settle", json={"note": "SEPA ref 42"}
    )
    assert (
        settled["status"] == "paid" and settled["processed_at"] and settled["note"] == "SEPA ref 42"
    )
    for action in ("settle", "reject"):
        error = await call(client, admin, "POST", f"/billing/payouts/{paid['id']}/{action}", 409)
        assert error["details"]["status"] == "paid"
    rejected = await call(client, admin, "POST", f"/billing/payouts/{refused['id']}/reject")
    assert rejected["status"] == "rejected"
    await call(client, admin, "POST", f"/billing/payouts/{refused['id']}/reject", 409)
    # The rejected amount is back in the wallet and in the earnings.
    assert await balanced(app, wallet_id) == credit + 25
    async with app.state.core.db.sessionmaker() as session:
        assert await earnings(session, wallet_id) == D(25)
        refund = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.key == f"payout-reject:{refused['id']}")
        )
        assert refund is not None and refund.kind == "adjustment" and refund.amount == 20
    view = await call(
        client, owner, "GET", "/billing/overview", params={"organisation_id": reseller}
    )
    assert (view["available_earnings"], view["pending_payouts"], view["total_payouts"]) == (
        "25.00",
        "0.00",
        "15.00",
    )
    # Lists: the organisation's, by status; every organisation's for admins only.
    mine = await call(
        client, owner, "GET", "/billing/payouts", params={"organisation_id": reseller}
    )
    assert [p["id"] for p in mine["items"]] == [refused["id"], paid["id"]]
    assert mine["payouts"] == mine["items"]
    only = await call(
        client,
        owner,
        "GET",
        "/billing/payouts",
        params={"organisation_id": reseller, "status": "paid"},
    )
    assert [p["id"] for p in only["items"]] == [paid["id"]]
    queue = await call(client, admin, "GET", "/billing/payouts", params={"all": "true"})
    assert {p["id"] for p in queue["items"]} == {paid["id"], refused["id"]}
    await call(client, owner, "GET", "/billing/payouts", 403, params={"all": "true"})
    assert (await call(client, owner, "GET", f"/billing/payouts/{paid['id']}"))["status"] == "paid"
    # Another tenant: nothing there. A random payout: 404, for admins too.
    stranger = await register()
    await call(client, stranger, "GET", f"/billing/payouts/{paid['id']}", 404)
    await call(
        client, stranger, "GET", "/billing/payouts", 404, params={"organisation_id": reseller}
    )
    await call(client, admin, "POST", f"/billing/payouts/{uuid.uuid4()}/settle", 404)
    await call(client, admin, "POST", f"/billing/payouts/{paid['id']}/settle", 422, json={"x": 1})


async def test_overview_transactions_and_subscription(client, register, app):
    user = await register()
    core = app.state.core
    sub = await call(client, user, "GET", "/billing/subscription")
    org_id = sub["organisation_id"]
    now = datetime.now(UTC)
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    next_month = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    # The marketplace's part (tests/api/test_subscriptions.py); every other field as before.
    assert sub.pop("marketplace") == {"subscriptions": [], "plans_sold": []}
    assert sub == {
        "organisation_id": org_id,
        "plan": "pay-as-you-go",
        "status": "active",
        "currency": "USD",
        "balance": "10.00",
        "low_balance_threshold": "5.00",
        "margin_percent": "0",
        "current_period": {
            "start": month.isoformat().replace("+00:00", "Z"),
            "end": next_month.isoformat().replace("+00:00", "Z"),
        },
        "next_invoice_date": next_month.isoformat().replace("+00:00", "Z"),
    }
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.scalar(select(Wallet).where(Wallet.organisation_id == org_id))
        assert wallet is not None
        await ledger.post(session, wallet, "top_up", D("25.50"), key="t1")
        await ledger.post(session, wallet, "charge", D("-3.25"), key="c1")
        await ledger.post(session, wallet, "refund", D("0.25"), key="r1")
        await session.commit()
    view = await call(client, user, "GET", "/billing/overview")
    assert view == {
        "organisation_id": org_id,
        "currency": "USD",
        "balance": "32.50",
        "available_earnings": "0.00",
        "total_revenue": "0.00",
        "total_charges": "3.00",
        "total_top_ups": "25.50",
        "total_payouts": "0.00",
        "pending_payouts": "0.00",
        "period": sub["current_period"],
    }
    # A period that holds nothing.
    past = await call(
        client,
        user,
        "GET",
        "/billing/overview",
        params={"start_date": "2020-01-01", "end_date": "2020-01-31"},
    )
    assert past["total_top_ups"] == "0.00" and past["balance"] == "32.50"
    assert past["period"] == {"start": "2020-01-01T00:00:00Z", "end": "2020-02-01T00:00:00Z"}
    # Transactions: newest first, filtered by type and dates.
    tx = await call(client, user, "GET", "/billing/transactions")
    assert [t["type"] for t in tx["items"]] == ["refund", "charge", "top_up", "adjustment"]
    assert tx["transactions"] == tx["items"] and tx["pagination"]["total"] == 4
    first = tx["items"][0]
    assert set(first) == {
        "id",
        "wallet_id",
        "type",
        "kind",
        "amount",
        "amount_exact",
        "balance_after",
        "balance_after_exact",
        "currency",
        "description",
        "reference_kind",
        "reference_id",
        "created_by",
        "created_at",
    }
    assert (first["amount"], first["balance_after"]) == ("0.25", "32.50")
    charges = await call(client, user, "GET", "/billing/transactions", params={"type": "charge"})
    assert [t["amount"] for t in charges["items"]] == ["-3.25"]
    today = now.date().isoformat()
    assert (
        len(
            (
                await call(
                    client,
                    user,
                    "GET",
                    "/billing/transactions",
                    params={"start_date": today, "end_date": today},
                )
            )["items"]
        )
        == 4
    )
    assert (
        await call(
            client,
            user,
            "GET",
            "/billing/transactions",
            params={"end_date": "2020-01-01T00:00:00Z"},
        )
    )["items"] == []
    paged = await call(client, user, "GET", "/billing/transactions", params={"limit": 3, "page": 2})
    assert [t["type"] for t in paged["items"]] == ["adjustment"]
    for params in (
        {"type": "gift"},
        {"start_date": "2026-02-01", "end_date": "2026-01-01"},
        {"start_date": "yesterday"},
        {"currency": "dollars"},
    ):
        for path in ("/billing/transactions", "/billing/overview"):
            if path == "/billing/overview" and "type" in params:
                continue
            error = await call(client, user, "GET", path, 422, params=params)
            assert error["code"] == "VALIDATION_ERROR", (path, params)
    await call(client, user, "GET", "/billing/transactions", 404, params={"currency": "EUR"})
    # The subscription's status follows the account.
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(
            update(BillingAccount)
            .where(BillingAccount.organisation_id == org_id)
            .values(low_balance_since=utcnow())
        )
        await session.commit()
    assert (await call(client, user, "GET", "/billing/subscription"))["status"] == "low_balance"
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(
            update(BillingAccount)
            .where(BillingAccount.organisation_id == org_id)
            .values(depleted_since=utcnow(), suspended_at=utcnow())
        )
        await session.commit()
    assert (await call(client, user, "GET", "/billing/subscription"))["status"] == "suspended"
    assert (await call(client, user, "GET", "/billing/account"))["status"] == "suspended"
    # Another tenant sees none of it.
    stranger = await register()
    for path in (
        "/billing/overview",
        "/billing/transactions",
        "/billing/subscription",
        "/billing/payouts",
    ):
        error = await call(client, stranger, "GET", path, 404, params={"organisation_id": org_id})
        assert error["code"] == "NOT_FOUND"
        r = await client.get(V1 + path, headers={**stranger.headers, "X-Organisation-ID": org_id})
        assert r.status_code == 404
    async with core.db.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Payout)) == 0
