"""The SDK's payments and top-ups against a live server of their own, whose Stripe
provider talks to the loopback Stripe of tests/stripe_server.py."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from nefos.sdk import (
    Client,
    ConflictError,
    NotFoundError,
    Payments,
    PermissionDeniedError,
    ValidationError,
)
from tests.conftest import ADMIN_PASSWORD, PASSWORD, DatabaseFactory, LiveServer, make_settings
from tests.sdk.conftest import unique_email
from tests.stripe_server import PUBLISHABLE_KEY, SECRET_KEY, WEBHOOK_SECRET, StripeServer, sign


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[StripeServer]:
    server = StripeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def payments_server(
    databases: DatabaseFactory,
    tmp_path_factory: pytest.TempPathFactory,
    stripe_api: StripeServer,
) -> Iterator[LiveServer]:
    settings = make_settings(
        databases.new_url(),
        tmp_path_factory.mktemp("payments-live"),
        stripe_secret_key=SECRET_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=stripe_api.url,
        stripe_publishable_key=PUBLISHABLE_KEY,
    )
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def user(payments_server: LiveServer) -> Iterator[Client]:
    with Client(payments_server.url) as c:
        c.auth.register(email=unique_email("pay"), password=PASSWORD)
        yield c


@pytest.fixture
def admin(payments_server: LiveServer) -> Iterator[Client]:
    with Client(payments_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


def test_a_bank_transfer_through_the_sdk(user: Client, admin: Client) -> None:
    assert isinstance(user.payments, Payments)
    start = Decimal(user.wallet.get().balance)
    made = user.payments.create(
        Decimal("12.50"), provider="manual", description="Invoice 42", idempotency_key="inv-42"
    )
    assert (made.status, made.amount, made.currency) == ("pending", "12.50", "USD")
    again = user.payments.create(
        Decimal("12.50"), provider="manual", description="Invoice 42", idempotency_key="inv-42"
    )
    assert again.id == made.id
    with pytest.raises(ValidationError):  # the gateway: same key, another request
        user.payments.create("13", provider="manual", idempotency_key="inv-42")
    page = user.payments.list(status="pending")
    assert [p.id for p in page.items] == [made.id] and page.pagination.total == 1
    with pytest.raises(PermissionDeniedError):
        user.payments.confirm(made.id)
    done = admin.payments.confirm(made.id)
    assert done.status == "succeeded" and done.ledger_entry_id
    assert admin.payments.confirm(made.id).status == "succeeded"  # no-op
    assert Decimal(user.wallet.get().balance) == start + Decimal("12.50")
    with pytest.raises(ConflictError):
        user.payments.cancel(made.id)
    other = user.payments.create(3, provider="manual")
    assert admin.payments.fail(other.id, reason="Never came").failure_reason == "Never came"
    third = user.payments.create("4", provider="manual")
    assert user.payments.cancel(third.id).status == "cancelled"
    assert Decimal(user.wallet.get().balance) == start + Decimal("12.50")


def test_amounts_are_never_floats(user: Client) -> None:
    with pytest.raises(TypeError):
        user.payments.create(12.5, provider="manual")  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as bad:
        user.payments.create("12.505", provider="manual")
    assert "amount" in bad.value.details


def test_a_stripe_payment_through_the_sdk(
    user: Client, payments_server: LiveServer, stripe_api: StripeServer
) -> None:
    start = Decimal(user.wallet.get().balance)
    payment = user.payments.create("25.00", idempotency_key="card-1")
    assert payment.provider == "stripe" and payment.status == "pending"
    assert payment.provider_ref and payment.client_secret
    assert user.payments.get(payment.id).client_secret == payment.client_secret
    stripe_api.pay(payment.provider_ref)
    event = stripe_api.event("payment_intent.succeeded", payment.provider_ref)
    for _ in range(2):  # delivered twice: credited once
        r = httpx.post(
            f"{payments_server.url}/api/v1/payments/stripe/webhook",
            content=event,
            headers={"Stripe-Signature": sign(event), "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
    got = user.payments.get(payment.id)
    assert got.status == "succeeded" and got.client_secret is None
    assert Decimal(user.wallet.get().balance) == start + 25

    # Paid by card (Stripe.js), then refreshed rather than waiting for the webhook.
    methods = user.payments.methods()
    assert (methods.providers, methods.default) == (["stripe", "manual"], "stripe")
    assert methods.card and methods.card.publishable_key == PUBLISHABLE_KEY
    card = user.payments.create("5.00")
    assert user.payments.refresh(card.id).status == "pending"
    assert card.provider_ref
    stripe_api.pay(card.provider_ref)
    assert user.payments.refresh(card.id).status == "succeeded"
    assert Decimal(user.wallet.get().balance) == start + 30


def test_top_ups_through_the_sdk(user: Client, admin: Client) -> None:
    org = user.wallet.get().organisation_id
    start = Decimal(user.wallet.get().balance)
    pending = user.wallet.top_up("20", provider="manual")
    assert (pending.provider, pending.status) == ("manual", "pending")
    credit = admin.wallet.top_up(
        "5.25", reason="Goodwill", organisation_id=org, idempotency_key="goodwill-1"
    )
    assert (credit.provider, credit.status, credit.description) == (
        "credit",
        "succeeded",
        "Goodwill",
    )
    assert admin.wallet.top_up("5.25", reason="Goodwill", organisation_id=org).id != credit.id
    assert (
        admin.wallet.top_up(
            "5.25", reason="Goodwill", organisation_id=org, idempotency_key="goodwill-1"
        ).id
        == credit.id
    )
    assert Decimal(user.wallet.get().balance) == start + Decimal("10.50")
    with pytest.raises(PermissionDeniedError):
        user.wallet.top_up("5", provider="credit", reason="Me")


def test_another_tenants_payment_is_not_found(user: Client, payments_server: LiveServer) -> None:
    payment = user.payments.create("8", provider="manual")
    with Client(payments_server.url) as other:
        other.auth.register(email=unique_email("other"), password=PASSWORD)
        with pytest.raises(NotFoundError):
            other.payments.get(payment.id)
        with pytest.raises(NotFoundError):
            other.payments.cancel(payment.id)
        assert other.payments.list().items == []
