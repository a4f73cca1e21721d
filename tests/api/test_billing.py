"""Billing end to end: a real container metered from its lifecycle, rated with the
catalogue, charged to the wallet by the engine; low balance, an empty wallet
(402) and suspension; the wallet and usage endpoints (seeds 000 and 004)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from nefos.billing import catalogue, invoices, ledger, metering
from nefos.billing.money import round_money
from nefos.billing.rating import rate_span
from nefos.db.models import (
    Alert,
    BillingAccount,
    LedgerEntry,
    Operation,
    Organisation,
    UsageRecord,
    Wallet,
)
from nefos.db.session import begin_write
from nefos.events import EventType
from tests.api.test_containers import seed_body
from tests.conftest import wait_operation

D = Decimal


async def _create_running(client: Any, user: Any, name: str = "billed") -> dict[str, Any]:
    r = await client.post("/api/containers", json=seed_body(name), headers=user.headers)
    assert r.status_code == 202, r.text
    op = await wait_operation(client, user.headers, r.json()["data"]["operation"])
    assert op["status"] == "succeeded", op
    return dict(r.json()["data"]["container"])


async def _org_of(client: Any, user: Any) -> str:
    r = await client.get("/api/v1/wallet", headers=user.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["organisation_id"])


async def _set_price(core: Any, sku: str, price: str) -> None:
    """``price`` from the start of this second on: usage spans start on whole seconds
    and are rated at the price in force when they start, so a resource that starts
    running later in this second is priced at ``price`` too."""
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await catalogue.ensure_defaults(session, core.settings.billing_currency)
        await catalogue.set_price(
            session,
            sku=sku,
            currency=core.settings.billing_currency,
            unit_price=D(price),
            at=metering.now_s(),
        )
        await session.commit()


async def _wallet(core: Any, org_id: str) -> tuple[Wallet, Decimal]:
    async with core.db.sessionmaker() as session:
        w = await session.scalar(select(Wallet).where(Wallet.organisation_id == org_id))
        assert w is not None
        return w, await ledger.ledger_sum(session, w.id)


@pytest.fixture
async def prices(app: Any) -> Any:
    """Round prices that make a few seconds cost cents: 36.00 a vCPU-hour (0.01 a
    vCPU-second), nothing for memory and storage."""
    core = app.state.core
    await _set_price(core, "vcpu_hour", "36.00")
    await _set_price(core, "ram_gb_hour", "0")
    await _set_price(core, "storage_gb_day", "0")
    yield core
    for s in catalogue.SKUS:
        await _set_price(core, s.sku, str(s.default))


async def test_a_running_container_is_billed_for_its_running_seconds(
    client, app, register, podman_host, prices
):
    core = app.state.core
    user = await register()
    sub = core.events.subscribe(lambda e: e.type == EventType.CONTAINER_STATUS)
    seen: dict[str, datetime] = {}
    try:
        c = await _create_running(client, user)
        await asyncio.sleep(2.5)
        r = await client.put(f"/api/v1/containers/{c['id']}/stop", headers=user.headers)
        assert r.status_code == 202, r.text
        op = await wait_operation(client, user.headers, r.json()["data"]["operation"])
        assert op["status"] == "succeeded", op
        while "stopped" not in seen:
            event = await asyncio.wait_for(sub.get(), 10)
            if event.data["container_id"] == c["id"]:
                seen.setdefault(event.data["status"], datetime.fromisoformat(event.timestamp))
    finally:
        sub.close()
    measured = (seen["stopping"] - seen["running"]).total_seconds()
    org_id = await _org_of(client, user)

    async with core.db.sessionmaker() as session:
        records = (
            await session.scalars(
                select(UsageRecord)
                .where(UsageRecord.resource_id == c["id"])
                .order_by(UsageRecord.started_at)
            )
        ).all()
    running = [r for r in records if r.state == "running"]
    assert len(running) == 1, records
    [run] = running
    # Start and stop are those of the lifecycle, to the second.
    assert abs(run.seconds - measured) <= 1.0, (run.seconds, measured)
    assert run.cpu_milli == 500 and run.memory_mb == 64 and run.organisation_id == org_id
    assert all(r.state in ("running", "stopped") for r in records)
    # Spans follow each other with no gap and no overlap.
    for a, b in zip(records, records[1:], strict=False):
        assert a.ended_at == b.started_at

    # Rated: the catalogue price times that time (0.5 vCPU at 0.01 a vCPU-second).
    async with core.db.sessionmaker() as session:
        start, end = records[0].started_at, records[-1].ended_at + timedelta(seconds=1)
        book = await catalogue.price_book(session, "USD", start, end)
        lines = await rate_span(session, book, start, end, UsageRecord.resource_id == c["id"])
    [cpu] = [ln for ln in lines if ln.sku == "vcpu_hour"]
    assert cpu.quantity == D(run.seconds) * D("0.5") / 3600
    price_times_time = round_money(D("36.00") * D(run.seconds) * D("0.5") / 3600, "USD")
    assert cpu.amount == price_times_time
    # Its invoice line is that amount.
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        org = await session.get(Organisation, org_id)
        invoice = await invoices.generate(session, org, "USD", start, end)
        await session.commit()
        [line] = [
            ln
            for ln in await invoices.lines_of(session, invoice.id)
            if ln.resource_id == c["id"] and ln.meter == "cpu"
        ]
    assert line.amount == price_times_time and line.unit_price == D("36.00")
    assert invoice.total == sum((ln.amount for ln in lines), D(0)), (
        "one line per resource and meter, each rounded once"
    )

    # The engine charges it once; the balance is the ledger's sum.
    before, _ = await _wallet(core, org_id)
    result = await app.state.billing.run_once()
    assert result.charges >= 1
    after, total = await _wallet(core, org_id)
    assert after.balance == total
    async with core.db.sessionmaker() as session:
        charges = (
            await session.scalars(
                select(LedgerEntry).where(
                    LedgerEntry.wallet_id == after.id, LedgerEntry.kind == "charge"
                )
            )
        ).all()
        charged = sum((-e.amount for e in charges), D(0))
        uncharged = await session.scalar(
            select(UsageRecord.id).where(
                UsageRecord.resource_id == c["id"], UsageRecord.charge_id.is_(None)
            )
        )
    assert uncharged is None
    assert before.balance - after.balance == charged
    assert abs(charged - D(run.seconds) * D("0.005")) < D("0.000001")
    # A second pass charges nothing more for those records.
    await app.state.billing.run_once()
    again, _ = await _wallet(core, org_id)
    assert again.balance == after.balance


async def test_wallet_and_usage_endpoints(client, app, register, podman_host, prices):
    user = await register()
    other = await register()
    c = await _create_running(client, user, "usage-1")
    await asyncio.sleep(1.2)

    r = await client.get("/api/wallet", headers=user.headers)
    assert r.status_code == 200, r.text
    w = r.json()["data"]
    assert w["currency"] == "USD" and w["balance"] == "10.00" and w["status"] == "active"
    assert D(w["available"]) == D(w["balance"]) - D(w["pending_charges"])
    r = await client.get("/api/wallet/ledger", headers=user.headers)
    assert r.status_code == 200, r.text
    [credit] = r.json()["data"]["entries"]
    assert credit["kind"] == "adjustment" and credit["amount"] == "10.00"
    assert r.json()["data"]["pagination"]["total"] == 1

    r = await client.get("/api/billing/summary", headers=user.headers)
    assert r.status_code == 200, r.text
    s = r.json()["data"]
    period = s["current_period"]
    assert period["currency"] == "USD" and D(period["total_cost"]) > 0
    assert period["start_date"].endswith("Z") and s["user_id"] == user.id
    [entry] = s["containers"]
    assert entry["container_id"] == c["id"] and entry["name"] == "usage-1"
    assert entry["usage"]["cpu_hours"] > 0 and D(entry["cost"]) > 0

    r = await client.get(f"/api/billing/containers/{c['id']}/usage", headers=user.headers)
    assert r.status_code == 200, r.text
    u = r.json()["data"]
    assert u["container_id"] == c["id"] and set(u["usage"]) >= {
        "cpu",
        "memory",
        "storage",
        "network",
    }
    assert u["usage"]["cpu"]["total_hours"] > 0 and isinstance(u["usage"]["cpu"]["cost"], str)
    assert D(u["total_cost"]) == sum(D(m["cost"]) for m in u["usage"].values())

    # Another tenant: the container does not exist; nor does a random one.
    r = await client.get(f"/api/billing/containers/{c['id']}/usage", headers=other.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "NOT_FOUND"
    r = await client.get(f"/api/billing/vms/{c['id']}/usage", headers=user.headers)
    assert r.status_code == 404
    r = await client.get(
        f"/api/billing/containers/{c['id']}/usage",
        params={"start_date": "2026-02-01T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"},
        headers=user.headers,
    )
    assert r.status_code in (400, 422) and r.json()["success"] is False


async def test_an_empty_wallet_refuses_creates_and_suspends_after_grace(
    client, app, register, podman_host, prices, monkeypatch
):
    core = app.state.core
    user = await register()
    # A price no wallet of 10.00 covers for long (usage is rated with the price in
    # force when it started).
    await _set_price(core, "vcpu_hour", "1000000")
    c = await _create_running(client, user, "spender")
    org_id = await _org_of(client, user)
    monkeypatch.setattr(core.settings, "billing_grace_period", 0.0)
    sub = core.events.subscribe(lambda e: e.type == EventType.BILLING)
    try:
        await asyncio.sleep(1.1)
        print("PASS", await app.state.billing.run_once())
        kinds = []
        while "suspended" not in kinds:
            event = await asyncio.wait_for(sub.get(), 10)
            if event.data.get("organisation_id") == org_id:
                kinds.append(event.data["kind"])
                assert event.organisation_id == org_id
    finally:
        sub.close()
    assert "low_balance" in kinds
    wallet, total = await _wallet(core, org_id)
    assert wallet.balance == total and wallet.balance >= 0  # never below zero
    async with core.db.sessionmaker() as session:
        account = await session.get(BillingAccount, org_id)
        assert account is not None and account.depleted_since is not None
        assert account.suspended_at is not None
        alert = await session.scalar(select(Alert).where(Alert.resource_id == wallet.id))
        assert alert is not None and alert.kind == "low_balance" and alert.status == "firing"

    # Its running container is stopped, not deleted.
    for _ in range(200):
        r = await client.get(f"/api/v1/containers/{c['id']}", headers=user.headers)
        if r.json()["data"]["container"]["status"] == "stopped":
            break
        await asyncio.sleep(0.1)
    assert r.json()["data"]["container"]["status"] == "stopped"
    # ... by the system, not by a user (no admin is borrowed to act as).
    async with core.db.sessionmaker() as session:
        stop = await session.scalar(
            select(Operation).where(
                Operation.resource_id == c["id"], Operation.kind == "container.stop"
            )
        )
        assert stop is not None and stop.user_id is None
        assert stop.params["actor"] == "system"
        assert stop.params["reason"] == "billing_suspension"
    # Creates and starts are refused with 402.
    r = await client.post("/api/containers", json=seed_body("more"), headers=user.headers)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    r = await client.put(f"/api/v1/containers/{c['id']}/start", headers=user.headers)
    assert r.status_code == 402, r.text
    r = await client.get("/api/wallet", headers=user.headers)
    assert r.json()["data"]["status"] == "suspended"
    assert D(r.json()["data"]["available"]) < 0

    # A top-up that covers the debt clears it all: charged, active again, alert resolved.
    await _set_price(core, "vcpu_hour", "36.00")
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        w = await session.get(Wallet, wallet.id)
        assert w is not None
        await ledger.post(session, w, "top_up", D("100000000"), key="test-top-up")
        await session.commit()
    await app.state.billing.run_once()
    async with core.db.sessionmaker() as session:
        account = await session.get(BillingAccount, org_id)
        assert account is not None
        assert account.depleted_since is None and account.suspended_at is None
        assert account.low_balance_since is None
        alert = await session.scalar(select(Alert).where(Alert.resource_id == wallet.id))
        assert alert is not None and alert.status == "resolved"
        left = await session.scalar(
            select(UsageRecord.id).where(
                UsageRecord.organisation_id == org_id, UsageRecord.charge_id.is_(None)
            )
        )
        assert left is None
    wallet, total = await _wallet(core, org_id)
    assert wallet.balance == total
    r = await client.put(f"/api/v1/containers/{c['id']}/start", headers=user.headers)
    assert r.status_code == 202, r.text
    await wait_operation(client, user.headers, r.json()["data"]["operation"])


async def test_usage_records_replay_and_cut_at_the_hour(app, client, register, podman_host):
    """The hourly cut closes open spans once; cutting again (another process, a retry)
    writes nothing."""
    from nefos.billing import metering

    core = app.state.core
    user = await register()
    c = await _create_running(client, user, "cut")
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    await asyncio.sleep(2.1)
    first = await metering.cut(core.db, until)
    again = await metering.cut(core.db, until)
    assert first >= 1 and again == 0
    async with core.db.sessionmaker() as session:
        records = (
            await session.scalars(select(UsageRecord).where(UsageRecord.resource_id == c["id"]))
        ).all()
    assert max(r.ended_at for r in records) == until


async def test_network_usage_comes_from_the_monitoring_rollups(app, client, register):
    from nefos.billing import metering
    from nefos.db.models import MetricRollupMinute

    core = app.state.core
    user = await register()
    org_id = await _org_of(client, user)
    hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    rid = "11111111-2222-3333-4444-555555555555"
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        await catalogue.ensure_defaults(session, "USD")
        for minute in range(60):
            for metric, rate in (("net_rx_bps", 1000.0), ("net_tx_bps", 500.0)):
                session.add(
                    MetricRollupMinute(
                        resource_id=rid,
                        metric=metric,
                        bucket=int(hour.timestamp()) + 60 * minute,
                        kind="container",
                        project_id=user.project_id,
                        avg=rate,
                        min=rate,
                        max=rate,
                        count=4,
                    )
                )
        await session.commit()
    assert await metering.network(core.db, hour) == 1
    assert await metering.network(core.db, hour) == 0  # once per resource and hour
    async with core.db.sessionmaker() as session:
        [rec] = (
            await session.scalars(select(UsageRecord).where(UsageRecord.resource_id == rid))
        ).all()
        assert rec.state == "network" and rec.organisation_id == org_id
        assert rec.network_bytes == 1500 * 3600 and rec.started_at == hour
        book = await catalogue.price_book(session, "USD", hour, hour + timedelta(hours=1))
        lines = await rate_span(
            session, book, hour, hour + timedelta(hours=1), UsageRecord.resource_id == rid
        )
    [net] = lines
    assert net.sku == "network_gb" and net.quantity == D("0.0054")
    assert net.amount == round_money(D("0.0054") * D("0.01"), "USD")


async def test_path_ids_are_checked_before_any_lookup(client, register):
    """A NUL byte (or any id off the pattern) is a 422, never a database error."""
    user = await register()
    for path in (
        "/api/v1/billing/containers/a%00b/usage",
        "/api/v1/billing/vms/a%00b/usage",
        "/api/v1/containers/a%00b",
        "/api/v1/monitoring/alert-rules/a%00b",
        "/api/v1/payments/a%00b",
        "/api/v1/invoices/a%00b",
    ):
        r = await client.get(path, headers=user.headers)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["code"] == "VALIDATION_ERROR"


async def _charge(core: Any, org_id: str, currency: str, amount: str, key: str) -> None:
    """A charge of ``amount`` (exact, nine places) straight on the ledger."""
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        w = await session.scalar(
            select(Wallet).where(Wallet.organisation_id == org_id, Wallet.currency == currency)
        )
        assert w is not None
        await ledger.post(session, w, "charge", -D(amount), key=key)
        await session.commit()


async def test_money_is_shown_in_minor_units_and_the_ledger_keeps_it_exact(client, app, register):
    """Issue 14: a fractional charge leaves the balance at nine places; ``/wallet``
    shows it in the currency's minor units, the ledger keeps the exact figure."""
    core = app.state.core
    user = await register()
    org_id = await _org_of(client, user)
    credit = core.settings.billing_signup_credit
    await _charge(core, org_id, "USD", str(credit - D("9.994754774")), "frac-1")

    r = await client.get("/api/v1/wallet", headers=user.headers)
    assert r.status_code == 200, r.text
    w = r.json()["data"]
    assert (w["balance"], w["pending_charges"], w["available"]) == ("9.99", "0.00", "9.99")
    assert D(w["available"]) == D(w["balance"]) - D(w["pending_charges"])

    r = await client.get("/api/v1/wallet/ledger", headers=user.headers)
    assert r.status_code == 200, r.text
    charge, signup = r.json()["data"]["items"]
    assert charge["kind"] == "charge"
    assert charge["amount"] == f"{-round_money(credit - D('9.994754774'), 'USD'):f}"
    assert charge["amount_exact"] == f"{-(credit - D('9.994754774')):f}"
    assert (charge["balance_after"], charge["balance_after_exact"]) == ("9.99", "9.994754774")
    assert (signup["amount"], signup["amount_exact"]) == (f"{credit:.2f}", f"{credit:f}")
    # Seed 002's transactions are the same entries, shown the same way.
    r = await client.get("/api/v1/billing/transactions", headers=user.headers)
    assert r.status_code == 200, r.text
    tx = r.json()["data"]["items"][0]
    assert (tx["balance_after"], tx["balance_after_exact"]) == ("9.99", "9.994754774")
    for path in ("/api/v1/billing/overview", "/api/v1/billing/subscription"):
        r = await client.get(path, headers=user.headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["balance"] == "9.99", path


async def test_a_zero_decimal_currency_is_shown_in_whole_units(client, app, register):
    """JPY has no minor unit: a wallet at 9.6 yen shows 10."""
    core = app.state.core
    user = await register()
    org_id = await _org_of(client, user)
    r = await client.put("/api/v1/billing/account", json={"currency": "JPY"}, headers=user.headers)
    assert r.status_code == 200, r.text
    await _charge(core, org_id, "JPY", "0.4", "frac-jpy")
    r = await client.get("/api/v1/wallet", headers=user.headers)
    assert r.status_code == 200, r.text
    w = r.json()["data"]
    assert (w["currency"], w["balance"], w["available"]) == ("JPY", "10", "10")
    r = await client.get("/api/v1/wallet/ledger", headers=user.headers)
    charge = r.json()["data"]["items"][0]
    assert (charge["amount"], charge["amount_exact"]) == ("0", "-0.4")
    assert (charge["balance_after"], charge["balance_after_exact"]) == ("10", "9.6")
