"""The money of marketplace plans (seed 002, issue 17): a monthly plan's fee is
charged at subscribing (402 and no subscription when the wallet cannot pay) and once
per period at renewal, however many billing passes run it; an unpaid renewal is
past due (the gateway answers 402) until the wallet pays; a plan cancelled at its
period's end is not renewed; deleting the API ends its subscriptions at once with a
pro-rata credit; the consumer's invoice shows the plan fees and the priced calls as
the wallet was debited. Real HTTP to a real API on the test Podman."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select, update

from nefos.billing import invoices, ledger, planfees
from nefos.billing.money import round_money
from nefos.db.models import (
    ApiCall,
    Invoice,
    Subscription,
    SubscriptionCharge,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.plans import month_after
from tests.api.test_containers import Api, assert_error
from tests.api.test_marketplace import FREE
from tests.api.test_subscriptions import lookup, org_of, plan_of, publish
from tests.conftest import wait_serving

V1 = "/api/v1"
D = Decimal
PRO = {
    "name": "Pro",
    "model": "monthly",
    "monthly_price": "4",
    "included_calls": 1,
    "overage_price": "0.50",
    "rate_limit_per_minute": 1000,
}
BIG = {"name": "Big", "model": "monthly", "monthly_price": "12.00", "included_calls": 10}


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def subscribe(api: Api, listing_id: str, plan_id: str) -> dict[str, Any]:
    got: dict[str, Any] = await api.call(
        "POST", f"/marketplace/listings/{listing_id}/subscribe", 201, json={"plan_id": plan_id}
    )
    return got


async def entries(api: Api) -> list[tuple[str, str]]:
    """The wallet's ledger, oldest first: (kind, amount)."""
    items = (await api.call("GET", "/wallet/ledger", params={"limit": 100}))["items"]
    return [(e["kind"], e["amount"]) for e in reversed(items)]


async def balance(api: Api) -> Decimal:
    return D((await api.call("GET", "/wallet"))["balance"])


async def top_up(app: Any, org_id: str, amount: str, key: str) -> None:
    async with app.state.core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.scalar(select(Wallet).where(Wallet.organisation_id == org_id))
        assert wallet is not None
        await ledger.post(session, wallet, "top_up", D(amount), key=key)
        await session.commit()


async def end_period_now(app: Any, sid: str) -> tuple[datetime, datetime]:
    """Move the subscription's period (and its fee's record) back, so that it ended
    a second before it started (and before now): the clock past its end. The period
    it is moved to."""
    async with app.state.core.db.sessionmaker() as session:
        # A write transaction from the start: on SQLite a read that turns into a
        # write fails at once if the app's loops wrote in between.
        await begin_write(session)
        sub = await session.get(Subscription, sid)
        assert sub is not None
        old = sub.period_start
        end = min(utcnow(), old).replace(microsecond=0) - timedelta(seconds=1)
        start = end - (sub.period_end - sub.period_start)
        await session.execute(
            update(Subscription)
            .where(Subscription.id == sid)
            .values(period_start=start, period_end=end)
        )
        await session.execute(
            update(SubscriptionCharge)
            .where(
                SubscriptionCharge.subscription_id == sid,
                SubscriptionCharge.period_start == old,
            )
            .values(period_start=start, period_end=end)
        )
        await session.commit()
    return start, end


async def fee_rows(app: Any, sid: str) -> list[SubscriptionCharge]:
    async with app.state.core.db.sessionmaker() as session:
        return list(
            await session.scalars(
                select(SubscriptionCharge)
                .where(SubscriptionCharge.subscription_id == sid)
                .order_by(SubscriptionCharge.created_at)
            )
        )


async def test_a_monthly_plan_is_paid_at_subscribing_or_refused_with_402(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator_user, consumer_user, poor_user = await register(), await register(), await register()
    creator, consumer, poor = (Api(client, u) for u in (creator_user, consumer_user, poor_user))
    made, listed = await publish(creator, "forecast", [PRO, BIG, FREE])
    lid = listed["id"]
    await creator.call("GET", "/wallet")  # the creator's wallet opens (10.00)

    got = await subscribe(consumer, lid, plan_of(listed, "pro")["id"])
    sub = got["subscription"]
    assert sub["status"] == "active" and sub["renews_at"] == sub["period_end"]
    assert sub["next_charge"] == {"amount": "4.00", "currency": "USD", "at": sub["period_end"]}
    assert await entries(consumer) == [("adjustment", "10.00"), ("charge", "-4.00")]
    assert await balance(consumer) == D("6.00")
    # The creator earns the fee less the platform's 20 %.
    assert await entries(creator) == [("adjustment", "10.00"), ("revenue", "3.20")]
    (fee,) = await fee_rows(app, sub["id"])
    assert (fee.kind, fee.amount, fee.period_start) == ("fee", D("4"), when(sub["period_start"]))

    # A wallet that cannot pay the fee: 402 RESOURCE_EXHAUSTED, and nothing is made.
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_of(listed, "big")["id"]},
        headers=poor_user.headers,
    )
    body = assert_error(r, 402, "RESOURCE_EXHAUSTED")
    assert body["error"]["details"]["fee"] == "12.00"
    async with app.state.core.db.sessionmaker() as session:
        made_subs = await session.scalar(
            select(func.count())
            .select_from(Subscription)
            .where(Subscription.organisation_id == await org_of(poor))
        )
    assert made_subs == 0
    assert await entries(poor) == [("adjustment", "10.00")]
    assert await entries(creator) == [("adjustment", "10.00"), ("revenue", "3.20")]
    # ... nor is a change to it: the subscription stays as it was.
    r = await client.put(
        f"{V1}/marketplace/subscriptions/{sub['id']}",
        json={"plan_id": plan_of(listed, "big")["id"]},
        headers=consumer_user.headers,
    )
    assert_error(r, 402, "RESOURCE_EXHAUSTED")
    same = (await consumer.call("GET", f"/marketplace/subscriptions/{sub['id']}"))["subscription"]
    assert same["plan"]["key"] == "pro" and same["period_start"] == sub["period_start"]
    assert await balance(consumer) == D("6.00")
    # The free plan it can have.
    assert (await subscribe(poor, lid, plan_of(listed, "hobby")["id"]))["subscription"][
        "next_charge"
    ] is None
    # Leaving the paid period for a free plan credits its unused part (all of it,
    # to the cent, seconds in) and keeps the period; the creator gives back its share.
    freed = await consumer.call(
        "PUT",
        f"/marketplace/subscriptions/{sub['id']}",
        json={"plan_id": plan_of(listed, "hobby")["id"]},
    )
    assert freed["subscription"]["period_start"] == sub["period_start"]
    assert freed["subscription"]["next_charge"] is None
    assert (await entries(consumer))[-1] == ("refund", "4.00")
    assert await balance(consumer) == D("10.00")
    assert (await entries(creator))[-1] == ("adjustment", "-3.20")
    assert [(f.kind, f.amount) for f in await fee_rows(app, sub["id"])] == [
        ("fee", D("4")),
        ("credit", D("-4")),
    ]

    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")


async def test_renewals_charge_once_go_past_due_unpaid_and_stop_when_cancelled(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator_user, consumer_user = await register(), await register()
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "radar", [PRO, FREE])
    lid, pro = listed["id"], plan_of(listed, "pro")
    got = await subscribe(consumer, lid, pro["id"])
    sid, key = got["subscription"]["id"], got["key"]["key"]
    consumer_org = await org_of(consumer)
    core = app.state.core

    # The clock past the period's end: two passes at once, then another, renew it
    # once -- a new period from the old end, its fee charged once.
    _, end = await end_period_now(app, sid)
    results = await asyncio.gather(
        planfees.renew_due(core.db, core.settings), planfees.renew_due(core.db, core.settings)
    )
    assert sorted(r.charged for r in results) == [0, 1]
    await app.state.billing.run_once()
    renewed = (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert renewed["status"] == "active"
    assert (when(renewed["period_start"]), when(renewed["period_end"])) == (end, month_after(end))
    assert [e for e in await entries(consumer) if e[0] == "charge"] == [("charge", "-4.00")] * 2
    assert await balance(consumer) == D("2.00")
    assert [e for e in await entries(creator) if e[0] == "revenue"] == [("revenue", "3.20")] * 2
    assert [(f.kind, f.period_start) for f in await fee_rows(app, sid)][-1] == ("fee", end)

    # The next renewal the wallet (2.00) cannot pay: past due, and the gateway
    # answers 402 (its calls are refused before anything is forwarded).
    _, end = await end_period_now(app, sid)
    await app.state.billing.run_once()
    due = (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert due["status"] == "past_due" and when(due["period_start"]) == end
    assert due["next_charge"] is None and await balance(consumer) == D("2.00")
    assert await lookup(app, key) is not None  # the key is live; its calls are not
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        r = await client.get(f"/gw/{listed['slug']}/index.html", headers={"X-API-Key": key})
        if r.status_code == 402:
            break
        assert asyncio.get_running_loop().time() < deadline, r.text
        await asyncio.sleep(0.5)
    assert_error(r, 402, "RESOURCE_EXHAUSTED")
    assert r.json()["error"]["details"]["status"] == "past_due"
    listed_due = await consumer.call("GET", "/marketplace/subscriptions?status=past_due")
    assert [s["id"] for s in listed_due["items"]] == [sid]
    r = await client.put(
        f"{V1}/marketplace/subscriptions/{sid}",
        json={"plan_id": plan_of(listed, "hobby")["id"]},
        headers=consumer_user.headers,
    )
    assert assert_error(r, 409, "CONFLICT")["error"]["details"]["status"] == "past_due"
    # A second subscription to the listing is refused while this one is past due.
    r = await client.post(
        f"{V1}/marketplace/listings/{lid}/subscribe",
        json={"plan_id": plan_of(listed, "hobby")["id"]},
        headers=consumer_user.headers,
    )
    assert_error(r, 409, "CONFLICT")

    # A top-up: the next pass charges the period's fee (once) and it is active again.
    await top_up(app, consumer_org, "10", "plan-top-up")
    await app.state.billing.run_once()
    await app.state.billing.run_once()
    paid = (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert paid["status"] == "active" and when(paid["period_start"]) == end
    assert [e for e in await entries(consumer) if e[0] == "charge"] == [("charge", "-4.00")] * 3
    assert await balance(consumer) == D("8.00")

    # Cancelled at the period's end: the pass ends it there and charges nothing.
    await consumer.call("DELETE", f"/marketplace/subscriptions/{sid}")
    _, end = await end_period_now(app, sid)
    await app.state.billing.run_once()
    ended = (await consumer.call("GET", f"/marketplace/subscriptions/{sid}"))["subscription"]
    assert (ended["status"], ended["ended_reason"]) == ("ended", "cancelled")
    assert when(ended["ended_at"]) == end
    assert await balance(consumer) == D("8.00") and len(await fee_rows(app, sid)) == 3
    assert await lookup(app, key) is None

    # A past-due period that ends unpaid ends the subscription (reason unpaid).
    other_user = await register()
    other = Api(client, other_user)
    again = await subscribe(other, lid, pro["id"])
    oid = again["subscription"]["id"]
    other_org = await org_of(other)
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.scalar(select(Wallet).where(Wallet.organisation_id == other_org))
        assert wallet is not None
        await ledger.post(session, wallet, "adjustment", -wallet.balance, key="empty-it")
        await session.commit()
    await end_period_now(app, oid)
    await app.state.billing.run_once()
    assert (await other.call("GET", f"/marketplace/subscriptions/{oid}"))["subscription"][
        "status"
    ] == "past_due"
    _, end = await end_period_now(app, oid)
    await app.state.billing.run_once()
    lapsed = (await other.call("GET", f"/marketplace/subscriptions/{oid}"))["subscription"]
    assert (lapsed["status"], lapsed["ended_reason"]) == ("ended", "unpaid")
    assert len(await fee_rows(app, oid)) == 1

    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")


async def test_deleting_an_api_ends_its_subscriptions_with_a_pro_rata_credit(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator_user, payer_user, free_user = await register(), await register(), await register()
    creator, payer, free = (Api(client, u) for u in (creator_user, payer_user, free_user))
    made, listed = await publish(creator, "tides", [{**PRO, "monthly_price": "9.00"}, FREE])
    lid = listed["id"]
    paid = await subscribe(payer, lid, plan_of(listed, "pro")["id"])
    gratis = await subscribe(free, lid, plan_of(listed, "hobby")["id"])
    pid = paid["subscription"]["id"]
    assert await balance(payer) == D("1.00") and await balance(creator) == D("17.20")
    # A third of the period gone (whole seconds, so the fraction is plain to check).
    start = utcnow().replace(microsecond=0) - timedelta(days=10)
    end = start + timedelta(days=30)
    async with app.state.core.db.sessionmaker() as session:
        await session.execute(
            update(Subscription).where(Subscription.id == pid).values(
                period_start=start, period_end=end
            )
        )  # fmt: skip
        await session.execute(
            update(SubscriptionCharge)
            .where(SubscriptionCharge.subscription_id == pid)
            .values(period_start=start, period_end=end)
        )
        await session.commit()

    await creator.wait(made["operation"])
    await creator.act("DELETE", f"/apis/{made['api_id']}")
    r = await client.delete(f"{V1}/apis/{made['api_id']}", headers=creator_user.headers)
    assert_error(r, 404, "NOT_FOUND")  # once: a second delete finds nothing to end

    ended = (await payer.call("GET", f"/marketplace/subscriptions/{pid}"))["subscription"]
    assert (ended["status"], ended["ended_reason"]) == ("cancelled", "api_deleted")
    assert ended["next_charge"] is None and ended["renews_at"] is None
    at = when(ended["ended_at"])
    left, total = int((end - at).total_seconds()), int((end - start).total_seconds())
    credit = round_money(D("9.00") * left / total, "USD")
    assert D("5.90") <= credit <= D("6.00")  # two thirds of 9.00, to the second
    assert await entries(payer) == [
        ("adjustment", "10.00"),
        ("charge", "-9.00"),
        ("refund", f"{credit:f}"),
    ]
    assert await balance(payer) == D("1.00") + credit
    # The creator gives back its share of the credit (the fee less 20 %), exactly.
    back = credit * D("0.8")
    last = (await creator.call("GET", "/wallet/ledger"))["items"][0]
    assert (last["kind"], D(last["amount_exact"])) == ("adjustment", -back)
    assert D(last["balance_after_exact"]) == D("17.20") - back
    kinds = [(f.kind, f.amount) for f in await fee_rows(app, pid)]
    assert kinds == [("fee", D("9")), ("credit", -credit)]
    gone = (await free.call("GET", f"/marketplace/subscriptions/{gratis['subscription']['id']}"))[
        "subscription"
    ]
    assert (gone["status"], gone["ended_reason"]) == ("cancelled", "api_deleted")
    # Keys are revoked; the listing is unpublished; the calls and fees stay.
    for got in (paid, gratis):
        assert await lookup(app, got["key"]["key"]) is None
        shown = (
            await Api(client, payer_user if got is paid else free_user).call(
                "GET", f"/marketplace/subscriptions/{got['subscription']['id']}"
            )
        )["subscription"]
        assert all(k["revoked_at"] is not None for k in shown["keys"])
        r = await client.get(
            f"/gw/{listed['slug']}/index.html", headers={"X-API-Key": got["key"]["key"]}
        )
        assert_error(r, 401, "UNAUTHORIZED")
    mine = (await creator.call("GET", f"/marketplace/listings/{lid}"))["listing"]
    assert mine["status"] == "unpublished"
    r = await client.get(f"{V1}/marketplace/listings/{lid}")
    assert_error(r, 404, "NOT_FOUND")


async def test_the_consumers_invoice_shows_plan_fees_and_calls_as_debited(
    client: httpx.AsyncClient, register: Any, podman_host: Any, app: Any
) -> None:
    creator_user, consumer_user = await register(), await register()
    creator, consumer = Api(client, creator_user), Api(client, consumer_user)
    made, listed = await publish(creator, "quotes", [PRO, FREE])
    await creator.wait(made["operation"])
    await wait_serving(client, creator_user.headers, made["api"]["container_id"])
    period_start = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    got = await subscribe(consumer, listed["id"], plan_of(listed, "pro")["id"])
    key = got["key"]["key"]
    # One call within the plan's quota, then three at its overage price of 0.50.
    for _ in range(4):
        r = await client.get(f"/gw/{listed['slug']}/index.html", headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
    await app.state.billing.run_once()
    charges = [D(a) for k, a in await entries(consumer) if k == "charge"]
    assert sorted(charges) == [D("-4.00"), D("-1.50")]
    await app.state.core.calls.flush()  # the gateway writes calls in groups
    async with app.state.core.db.sessionmaker() as session:
        priced = await session.scalar(
            select(func.count()).select_from(ApiCall).where(ApiCall.price > 0)
        )
    assert priced == 3

    # The period's invoice, made and finalized by the billing pass's own step: the
    # consumer has no usage of its own, only the marketplace.
    period_end = utcnow().replace(microsecond=0) + timedelta(minutes=5)
    core = app.state.core
    await invoices.invoice_period(core, period_start, period_end, now=period_end)
    consumer_org = await org_of(consumer)
    async with core.db.sessionmaker() as session:
        invoice = await session.scalar(
            select(Invoice).where(Invoice.organisation_id == consumer_org)
        )
        assert invoice is not None
        lines = list(await invoices.lines_of(session, invoice.id))
    described = sorted((ln.meter, ln.description, ln.quantity, ln.amount) for ln in lines)
    title = listed["title"]
    assert described == [
        ("api_calls", f"API calls: {title} (Pro) 3 calls", D(3), D("1.50")),
        ("plan_fee", f"Plan fee: {title} (Pro) {fee_days(got)}", D(1), D("4.00")),
    ]
    assert invoice.total == -sum(charges) and invoice.status == "paid"
    shown = await consumer.call("GET", f"/invoices/{invoice.id}")
    assert {ln["description"] for ln in shown["lines"]} == {d for _, d, _, _ in described}

    await creator.act("DELETE", f"/apis/{made['api_id']}")


def fee_days(got: dict[str, Any]) -> str:
    sub = got["subscription"]
    return f"{when(sub['period_start']):%Y-%m-%d} to {when(sub['period_end']):%Y-%m-%d}"
