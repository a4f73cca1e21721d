"""The SDK's catalogue, billing account, quotes and payouts, against a live server of
their own (prices changed here touch no other module) and the test Podman."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import select

from nefos.billing import ledger
from nefos.billing.money import round_money
from nefos.db.models import Wallet
from nefos.db.session import Database, begin_write
from nefos.schemas.billing import (
    BillingAccountPublic,
    BillingOverview,
    PayoutPublic,
    ProductPage,
    ProductPublic,
    QuoteAccepted,
    QuotePublic,
    SubscriptionPublic,
)
from nefos.sdk import (
    Client,
    ConflictError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    ValidationError,
    container_item,
    volume_item,
)
from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    TEST_IMAGE,
    DatabaseFactory,
    LiveServer,
    make_settings,
)
from tests.sdk.test_compute_sdk import ensure_podman_host, unregister_podman_host

D = Decimal
WAIT = {"timeout": 120, "poll": 0.2}


@pytest.fixture(scope="module")
def billing_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = make_settings(databases.new_url(), tmp_path_factory.mktemp("billing-live"))
    with LiveServer(settings) as server:
        yield server
        unregister_podman_host(server)


def new_user(server: LiveServer) -> Client:
    c = Client(server.url)
    c.auth.register(email=f"sdk-bill-{uuid.uuid4().hex[:10]}@example.com", password=PASSWORD)
    return c


def admin(server: LiveServer) -> Client:
    return Client(server.url, username="admin", password=ADMIN_PASSWORD)


def earn(server: LiveServer, org_id: str, amount: str) -> None:
    """Credit the organisation's wallet (opened through the API first) with revenue,
    as the billing engine credits a reseller's margin."""

    async def post() -> None:
        db = Database(server.settings.resolved_database_url)
        try:
            async with db.sessionmaker() as session:
                await begin_write(session)
                wallet = await session.scalar(
                    select(Wallet).where(Wallet.organisation_id == org_id)
                )
                assert wallet is not None
                await ledger.post(session, wallet, "revenue", D(amount), key=str(uuid.uuid4()))
                await session.commit()
        finally:
            await db.dispose()

    asyncio.run(post())


def test_catalogue_and_margins(billing_server: LiveServer) -> None:
    with new_user(billing_server) as c, admin(billing_server) as a:
        listed = c.products.list(limit=500)
        assert isinstance(listed, ProductPage) and listed.currency == "USD"
        assert {p.sku: p.unit_price for p in listed.items}["vcpu_hour"] == "0.05"
        new = a.products.set_price("flavor:gpu", D("1.25"), name="GPU VM")
        assert isinstance(new, ProductPublic) and (new.unit_price, new.name) == ("1.25", "GPU VM")
        history = a.products.history("flavor:gpu")
        assert isinstance(history, Page) and [p.unit_price for p in history.items] == ["1.25"]
        retired = a.products.retire("flavor:gpu")
        assert isinstance(retired, ProductPublic) and retired.effective_to is not None
        assert "flavor:gpu" not in {p.sku for p in c.products.list(limit=500).items}
        with pytest.raises(NotFoundError):
            a.products.retire("flavor:gpu")
        with pytest.raises(PermissionDeniedError):
            c.products.set_price("vcpu_hour", "9")
        with pytest.raises(ValidationError) as err:
            a.products.set_price("vcpu_hour", "-1")
        assert err.value.code == "VALIDATION_ERROR"
        with pytest.raises(ValidationError):
            a.products.set_price("teleport_hour", "1")
        # A reseller's margin: its child pays it, the reseller does not.
        reseller = c.organisations.create(name="SDK Res", kind="reseller")
        child = c.organisations.create_child(reseller.id, name="SDK Child")
        account = c.billing_account.update(organisation_id=reseller.id, margin_percent="10")
        assert isinstance(account, BillingAccountPublic) and account.margin_percent == "10"
        assert c.billing_account.get(organisation_id=reseller.id).organisation_kind == "reseller"
        theirs = {p.sku: p.unit_price for p in c.products.list(organisation_id=child.id).items}
        assert D(theirs["vcpu_hour"]) == D("0.055")
        with pytest.raises(ValidationError):
            c.billing_account.update(organisation_id=child.id, margin_percent="5")
        updated = c.billing_account.update(low_balance_threshold=D("2.50"))
        assert updated.low_balance_threshold == "2.50"


def test_quotes_price_and_provision(billing_server: LiveServer) -> None:
    with new_user(billing_server) as c, admin(billing_server) as a:
        ensure_podman_host(a)
        quote = c.quotes.create(
            [
                container_item(count=2, cpu="0.1", memory="32m", image=TEST_IMAGE, ports=[8080]),
                volume_item(size_gb=48, name="data"),
            ],
            name="sdk",
            hours_per_month=100,
        )
        assert isinstance(quote, QuotePublic) and quote.status == "open"
        # 2 x 0.1 vCPU x 100 h at 0.05; 2 x 1/32 GB x 100 h at 0.005; 48 GB x 100/24 days at 0.10.
        want = [
            round_money(D(2) * D("0.1") * 100 * D("0.05"), "USD"),
            round_money(D(2) * D(32) / 1024 * 100 * D("0.005"), "USD"),
            round_money(D(48) * 100 / 24 * D("0.10"), "USD"),
        ]
        assert [D(ln.amount) for ln in quote.lines] == want
        assert D(quote.monthly_total) == sum(want) == D("21.03")
        assert [q.id for q in c.quotes.list().items] == [quote.id]
        # The volume needs a VM host, which this server has none of: a quote of the
        # containers alone is accepted.
        only = c.quotes.create(
            [c.quotes.container(count=2, cpu="0.1", memory="32m", image=TEST_IMAGE)],
            name="sdk-run",
        )
        accepted = c.quotes.accept(only.id, idempotency_key=f"acc-{only.id}")
        assert isinstance(accepted, QuoteAccepted) and accepted.quote.status == "accepted"
        assert [r.name for r in accepted.resources] == [
            "sdk-run-container-1",
            "sdk-run-container-2",
        ]
        for r in accepted.resources:
            assert r.operation is not None and r.id is not None
            assert c.operations.wait(r.operation, **WAIT).status == "succeeded"
            assert c.containers.get(r.id).status == "running"
        assert c.quotes.get(only.id).status == "accepted"
        with pytest.raises(ConflictError):
            c.quotes.accept(only.id)
        for r in accepted.resources:
            assert r.id is not None
            c.operations.wait(c.containers.delete(r.id), **WAIT)
        with pytest.raises(NotFoundError), new_user(billing_server) as other:
            other.quotes.get(quote.id)


def test_payouts_and_revenue_views(billing_server: LiveServer) -> None:
    with new_user(billing_server) as c, admin(billing_server) as a:
        reseller = c.organisations.create(name="SDK Payee", kind="reseller")
        sub = c.billing_account.subscription(organisation_id=reseller.id)  # opens the wallet
        assert isinstance(sub, SubscriptionPublic) and sub.plan == "pay-as-you-go"
        assert (sub.status, sub.balance) == ("active", "10.00")
        earn(billing_server, reseller.id, "60")
        first = c.payouts.request("25", organisation_id=reseller.id, idempotency_key="p-1")
        again = c.payouts.request("25", organisation_id=reseller.id, idempotency_key="p-1")
        assert isinstance(first, PayoutPublic) and again.id == first.id
        assert (first.amount, first.status) == ("25.00", "pending")
        with pytest.raises(ValidationError) as err:
            c.payouts.request("40", organisation_id=reseller.id)
        assert err.value.details["available"] == "35.00"
        second = c.payouts.request(D("30"), organisation_id=reseller.id, method="paypal")
        assert a.payouts.settle(first.id, note="ref 1").status == "paid"
        assert a.payouts.reject(second.id).status == "rejected"
        with pytest.raises(PermissionDeniedError):
            c.payouts.settle(second.id)
        with pytest.raises(ConflictError):
            a.payouts.reject(first.id)
        listed = c.payouts.list(organisation_id=reseller.id)
        assert [p.id for p in listed.items] == [second.id, first.id]
        assert c.payouts.get(first.id).note == "ref 1"
        assert first.id in {p.id for p in a.payouts.list(all=True, status="paid").items}
        view = c.billing_account.overview(organisation_id=reseller.id)
        assert isinstance(view, BillingOverview)
        assert (view.balance, view.available_earnings, view.total_revenue) == (
            "45.00",
            "35.00",
            "60.00",
        )
        assert (view.total_payouts, view.pending_payouts) == ("25.00", "0.00")
        tx = c.billing_account.transactions(organisation_id=reseller.id)
        assert [t.type for t in tx.items] == [
            "adjustment",
            "payout",
            "payout",
            "revenue",
            "adjustment",
        ]
        payouts_only = c.billing_account.transactions(organisation_id=reseller.id, type="payout")
        assert [t.amount for t in payouts_only.items] == ["-30.00", "-25.00"]
        assert (
            c.billing_account.transactions(organisation_id=reseller.id, end_date="2020-01-01").items
            == []
        )
